"""Chat stage: the generation engine, placeholder filling and the terminal chat."""

from ecombot.chat.engine import (BASE, Decoding, Generation, GenerationEngine, TransformersEngine,
                                 adapters_answer_limit)
from ecombot.chat.factory import ENGINES, open_engine
from ecombot.chat.grounding import open_knowledge
from ecombot.chat.placeholders import PlaceholderStream, fill_placeholders, parse_context
from ecombot.chat.terminal import answer_streaming, repl

__all__ = ["BASE", "ENGINES", "Decoding", "Generation", "GenerationEngine", "PlaceholderStream", "TransformersEngine",
           "adapters_answer_limit", "answer_streaming", "fill_placeholders", "open_engine",
           "open_knowledge", "parse_context", "repl"]
