"""Chat stage: the generation engine, placeholder filling and the terminal chat."""

from ecombot.chat.engine import Decoding, Engine, Generation
from ecombot.chat.placeholders import PlaceholderStream, fill_placeholders, parse_context
from ecombot.chat.terminal import answer_streaming, repl

__all__ = ["Decoding", "Engine", "Generation", "PlaceholderStream", "answer_streaming", "fill_placeholders", "parse_context", "repl"]
