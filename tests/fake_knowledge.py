"""A stand-in knowledge base for the chat and serve tests: two store passages, found by shared words."""

from __future__ import annotations

import json
import re

import pytest

import ecombot.knowledge
from ecombot.errors import EcombotError
from ecombot.knowledge import Grounder, Hit, Passage

RETURNS = Passage("policy.md", "Policies > Returns and exchanges", 3, "Unworn shoes can be returned within 30 days.")
SHIPPING = Passage("policy.md", "Policies > Shipping", 9, "Parcels ship within 2 working days.")
RETURN_PAIR = Passage("data: faq.json", "returns", 4, "Yes: unworn shoes come back free within 30 days, "
                      "order {{Order Number}} included.", "Can I return shoes I bought?")
HANDOFF = "Let me fetch a colleague for this. They will write back soon."
COVERED = "Can I return my shoes?"
NOT_COVERED = "Do you sell gift cards?"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{4,}", text.lower()))


class FakeRetriever:
    """`search` finds the passages sharing a word (of 4+ letters, in a pair's question or any passage's text) with
    the question, score 0.5 per word; `covers` wants one found. Records the questions it was asked."""

    def __init__(self, passages=(RETURNS, SHIPPING)):
        self.passages, self.queries = list(passages), []

    def search(self, queries, k, exclude=None):
        self.queries.extend(queries)
        said = {p: words(f"{p.question or ''} {p.text}") for p in self.passages}
        return [sorted((Hit(p, 0.5 * len(words(q) & said[p])) for p in self.passages if words(q) & said[p]),
                       key=lambda h: -h.score)[:k] for q in queries]

    def covers(self, hits):
        return bool(hits)

    def question_cosines(self, queries, pairs):
        """0.5 per word a pair's question shares with the query."""
        return [[0.5 * len(words(q) & words(p.question)) for p in ps] for q, ps in zip(queries, pairs)]


def fake_grounder(passages=(RETURNS, SHIPPING), k: int = 3, reuse: float | None = None,
                  check_facts: bool = False) -> Grounder:
    return Grounder(FakeRetriever(passages), k, HANDOFF, reuse, check_facts)


@pytest.fixture
def knowledge_bases(monkeypatch):
    """`open_grounder` over named bases: "shop" holds passages, "default" and "empty" none; records each call."""
    calls = []

    def open_grounder(name, db, k, handoff, reuse=None, pairs_from=None, check_facts=False):
        calls.append((name, db, k, handoff, reuse, pairs_from))
        if name in ("default", "empty"):
            raise EcombotError(f"the knowledge base {name!r} is empty")
        return fake_grounder(k=k, reuse=reuse, check_facts=check_facts)

    monkeypatch.setattr(ecombot.knowledge, "open_grounder", open_grounder)
    return calls


def grounded_run(tmp_path):
    """A run directory trained on the "shop" base (k 4, HANDOFF): run_config.json is all chat and serve read of it."""
    run = tmp_path / "run"
    run.mkdir()
    knowledge = {"name": "shop", "db": "sqlite:///shop.db", "k": 4, "handoff": HANDOFF, "content_hash": "ab",
                 "passages": 2, "handoff_share": 0.1, "pairs": ["data: shop.jsonl"]}
    (run / "run_config.json").write_text(json.dumps({"knowledge": knowledge}))
    return run
