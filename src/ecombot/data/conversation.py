"""The one in-memory type every reader produces and every later stage consumes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
# Spellings of the three roles used by common dataset formats (ShareGPT's human/gpt, Gemma's model, ...).
ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "customer": "user", "client": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "agent": "assistant", "chatbot": "assistant",
}


def normalise_text(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: 'Where is my order?!' == 'where is  my order'."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@dataclass
class Conversation:
    """A support conversation: optional system turn, then user/assistant turns ending with the assistant."""

    messages: list[dict[str, str]]
    intent: str | None = None
    category: str | None = None
    source: str = ""  # "file:line" the conversation came from, for error messages and reports
    meta: dict = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The first customer message: the key for de-duplication and leakage checks."""
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    @property
    def answer(self) -> str:
        """The final assistant message: the reference answer in evaluation."""
        return self.messages[-1]["content"] if self.messages else ""

    @property
    def answers(self) -> list[str]:
        """Every assistant turn: what training scores, so what sizes the answer token limit."""
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    def to_json(self) -> dict:
        record: dict = {"messages": self.messages}
        if self.intent is not None:
            record["intent"] = self.intent
        if self.category is not None:
            record["category"] = self.category
        return record
