"""`ecombot chat`: a terminal conversation with streaming answers, /reset and /quit."""

from __future__ import annotations

import sys

from ecombot.chat.engine import GenerationEngine
from ecombot.chat.placeholders import PlaceholderStream

HELP = "Type your question. /reset starts a new conversation, /quit leaves."


def answer_streaming(engine: GenerationEngine, history: list[dict[str, str]], context: dict[str, str], out=sys.stdout) -> str:
    """Stream one answer to `out` with placeholders filled; returns the raw answer for the history."""
    stream, raw = PlaceholderStream(context), []
    for piece in engine.stream(history):
        raw.append(piece)
        out.write(stream.feed(piece))
        out.flush()
    out.write(stream.flush() + "\n")
    out.flush()
    return "".join(raw).strip()


def repl(engine: GenerationEngine, context: dict[str, str], read=input, out=sys.stdout) -> None:
    history: list[dict[str, str]] = []
    out.write(HELP + "\n")
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            history = []
            out.write("(new conversation)\n")
            continue
        history.append({"role": "user", "content": text})
        out.write("bot> ")
        history.append({"role": "assistant", "content": answer_streaming(engine, history, context, out)})
