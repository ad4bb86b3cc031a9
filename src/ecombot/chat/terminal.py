"""`ecombot chat`: a terminal conversation with streaming answers, /reset and /quit; grounded answers list their
sources, and a handover to an agent says so."""

from __future__ import annotations

import sys

from ecombot.chat.engine import GenerationEngine
from ecombot.chat.placeholders import PlaceholderStream
from ecombot.knowledge import STORED_ANSWER_NOTE, Grounder, Grounding, is_handoff

HELP = "Type your question. /reset starts a new conversation, /quit leaves."
HANDOFF_NOTE = "(handed over to a support agent)"
FACTS_NOTE = "(left out, not in the knowledge base: "


def dim(text: str, out) -> str:
    return f"\x1b[2m{text}\x1b[0m" if out.isatty() else text


def answer_streaming(engine: GenerationEngine, history: list[dict[str, str]], context: dict[str, str], out=None,
                     grounder: Grounder | None = None) -> str:
    """Stream one answer to `out` with placeholders filled, then its sources; returns the raw answer for the history.

    With a `grounder` the model reads the passages found for the question; a question they do not cover gets the
    handoff answer, one a stored Q&A pair answers gets that answer, both without generation; a generated answer goes
    through its fact check (whole sentences then). `out` defaults to sys.stdout as it is at the call (tests replace
    it)."""
    out = out or sys.stdout
    grounding = grounder.ground(history) if grounder else Grounding(history)
    check = grounder.fact_check(grounding) if grounder else None
    stream, raw = PlaceholderStream(context), []

    def write(text: str) -> None:
        raw.append(text)
        out.write(stream.feed(text))
        out.flush()

    def show(row: int, piece: str) -> None:
        if piece:  # empty: the engine asking whether to go on
            write(check.feed(piece) if check else piece)

    if grounding.answer is None:  # generated on this thread, the one that loaded the model (serve.run_server: why)
        engine.generate([grounding.messages], on_text=show)
        if check:
            write(check.flush())
    else:
        show(0, grounding.answer)
    out.write(stream.flush() + "\n")
    answer = "".join(raw).strip()
    if grounding.covered and grounding.cited:
        labels = dict.fromkeys(hit.passage.label for hit in grounding.cited)  # two passages of one section: one label
        reused = STORED_ANSWER_NOTE if grounding.reused else ""
        out.write(dim("from: " + "; ".join(labels) + reused, out) + "\n")
    if check and check.dropped:
        out.write(dim(FACTS_NOTE + ", ".join(check.dropped) + ")", out) + "\n")
    if grounder and (not grounding.covered or (check and check.dropped) or is_handoff(answer, grounder.handoff)):
        out.write(dim(HANDOFF_NOTE, out) + "\n")
    out.flush()
    return answer


def repl(engine: GenerationEngine, context: dict[str, str], read=input, out=None,
         grounder: Grounder | None = None) -> None:
    out = out or sys.stdout
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
        history.append({"role": "assistant", "content": answer_streaming(engine, history, context, out, grounder)})
