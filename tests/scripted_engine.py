"""A stand-in generation engine for the server layer's tests: fixed answers, as fast (or slow) as a test needs."""

from __future__ import annotations

import time

from ecombot.chat import Decoding, Generation
from ecombot.chat.engine import PromptTooLong


class ScriptedEngine:
    """Answers with a fixed text, one word per step (optionally slowly), recording batches, cancellations and the
    conversations it was asked to answer (`seen`, as the model would read them)."""

    context_tokens = 256

    def __init__(self, answer: str = "Your order {{Order Number}} left our warehouse today.", step_s: float = 0.0):
        self.answer, self.step_s = answer, step_s
        self.decoding = Decoding(max_new_tokens=50)
        self.batches: list[int] = []
        self.cancelled = 0
        self.seen: list[list[dict[str, str]]] = []
        self.decodings: list[Decoding] = []  # each batch's
        self.grammars: list[list[str | None] | None] = []  # each batch's, a grammar per row (None: all free)

    def adapters(self) -> list[str]:
        return ["support"]

    def prompt_ids(self, messages, adapter=None, reserve=None):
        words = sum(len(m["content"].split()) for m in messages)
        if words + (reserve or 0) > self.context_tokens:
            raise PromptTooLong(f"{words} words")
        return list(range(words))

    def generate(self, conversations, adapter=None, decoding=None, max_new_tokens=None, on_text=None, prompts=None,
                 grammars=None):
        self.batches.append(len(conversations))
        self.grammars.append(grammars)
        self.decodings.append(decoding)
        self.seen.extend(conversations)
        words = self.answer.split(" ")
        limits = max_new_tokens or [50] * len(conversations)
        texts, finish = [""] * len(conversations), ["stop"] * len(conversations)
        for step, word in enumerate(words):
            time.sleep(self.step_s)
            for row in range(len(conversations)):
                if finish[row] != "stop" or step >= limits[row]:
                    finish[row] = "length" if finish[row] == "stop" else finish[row]
                    continue
                piece = word if step == 0 else " " + word
                texts[row] += piece
                if on_text and on_text(row, piece) is False:
                    finish[row] = "cancelled"
                    self.cancelled += 1
        return [Generation(t, len(t.split()), 3, f) for t, f in zip(texts, finish)]

    def version(self, adapter=None):
        return None

    def reload_promoted(self):
        return {}
