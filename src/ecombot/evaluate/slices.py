"""The built-in data's slices: questions a fine-tuned model cannot answer from its weights alone.

- `unseen_topics`: the intents held out of every split (data.UNSEEN_INTENTS), 12 seeded questions each; their
  answers are only in the store's knowledge.
- `policy_edits`: the store changed its policy after training (slices/policy_edits.json); the test questions whose
  reference changes, asked against a knowledge base whose passages carry the new values.
- `not_covered`: questions the store's knowledge does not answer (slices/not_covered.jsonl); the reference is the
  handoff.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace

from ecombot.data import UNSEEN_INTENTS, Conversation, builtin_path, clean, read_file
from ecombot.data.builtin import slice_path

SLICES = ("unseen_topics", "policy_edits", "not_covered")
UNSEEN_PER_INTENT = 12

Edits = list[tuple[str, str]]


@dataclass
class EvalSet:
    """Questions every system answers and is scored on. `edits` are applied to the knowledge the systems search."""

    name: str
    test: list[Conversation]
    edits: Edits = field(default_factory=list)


def policy_edits() -> Edits:
    return [(old, new) for old, new in json.loads(slice_path("policy_edits.json").read_text(encoding="utf-8"))["edits"]]


def apply_edits(text: str, edits: Edits) -> str:
    for old, new in edits:
        text = text.replace(old, new)
    return text


def edit_conversation(conv: Conversation, edits: Edits) -> Conversation:
    """The conversation as it goes under the new policy: every turn, not only the reference, says the new value."""
    messages = [{**m, "content": apply_edits(m["content"], edits)} for m in conv.messages]
    return replace(conv, messages=messages)


def unseen_topics(seed: int) -> list[Conversation]:
    convs, _ = clean(read_file(builtin_path()))
    rng = random.Random(seed)
    picked = []
    for intent in UNSEEN_INTENTS:
        members = [c for c in convs if c.intent == intent]
        picked += rng.sample(members, min(UNSEEN_PER_INTENT, len(members)))
    rng.shuffle(picked)  # a --limit then still asks every intent
    return picked


def changed_by(test: list[Conversation], edits: Edits) -> list[Conversation]:
    """The test conversations whose reference states an old value, edited."""
    return [edit_conversation(c, edits) for c in test if apply_edits(c.answer, edits) != c.answer]


def not_covered() -> list[Conversation]:
    path = slice_path("not_covered.jsonl")
    return clean(read_file(path))[0] if path.is_file() else []


def builtin_slices(test: list[Conversation], seed: int, limit: int | None) -> list[EvalSet]:
    """The three slices, each cut to `limit` questions; `test` is the built-in data's whole test split."""
    edits = policy_edits()
    sets = [EvalSet("unseen_topics", unseen_topics(seed)), EvalSet("policy_edits", changed_by(test, edits), edits),
            EvalSet("not_covered", not_covered())]
    return [replace(s, test=s.test[:limit] if limit else s.test) for s in sets if s.test]
