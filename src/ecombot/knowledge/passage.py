"""What the knowledge base holds and what a search returns."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ecombot.data.conversation import normalise_text


@dataclass(frozen=True)
class Passage:
    """One retrievable piece of a store document, or one Q&A pair of a data file.

    `source` is the name the store added it under (a file name, or "data: faq.json" for training pairs), `heading`
    the heading path inside the document ("Returns and exchanges > Final sale", "" when none), `line` the 1-based
    line it starts on. For a Q&A pair `question` holds the question and `text` the answer."""

    source: str
    heading: str
    line: int
    text: str
    question: str | None = None

    @property
    def label(self) -> str:
        """How an answer cites it: "Returns and exchanges (policy.md)", or the source alone."""
        last = self.heading.rsplit(" > ", 1)[-1]
        return f"{last} ({self.source})" if last else self.source

    @cached_property  # a search compares the keys of its candidates
    def key(self) -> tuple[str, str]:
        """What makes two passages say the same: their question and text, normalised. The same follow-up and its
        answer recur in many conversations ("And how long does standard take?"), so a data file holds repeats."""
        return normalise_text(self.question or ""), normalise_text(self.text)

    @property
    def prompt_text(self) -> str:
        return f"Q: {self.question}\nA: {self.text}" if self.question else self.text


@dataclass(frozen=True)
class Hit:
    """A passage found for a question. `score` decides coverage (compared with the retriever's threshold); `dense`
    and `lexical` are the two signals it fuses."""

    passage: Passage
    score: float
    dense: float = 0.0
    lexical: float = 0.0

    def to_source(self) -> dict:
        """What an API response and the web page show: where the answer's knowledge came from."""
        p = self.passage
        return {"source": p.source, "heading": p.heading, "line": p.line, "label": p.label,
                "score": round(self.score, 4)}
