"""The built-in dataset: original support conversations for the fictional store Harbor & Pine.

Written for ecombot by scripts/build_builtin_dataset.py; the answers follow policy.md.
"""

from importlib import resources
from pathlib import Path

UNSEEN_INTENTS = ("installments", "newsletter_unsubscribe", "price_adjustment")
"""Intents never trained on, held out of the built-in data's train/validation/test split by `data.prepare(None)`.

Evaluation asks their questions as the `unseen_topics` slice: every answer is stated in policy.md with a concrete
fact (Klarna on orders over $35 in 4 payments; unsubscribing takes effect within 48 hours; price drops within 14
days), no other intent's answer touches the topic, and the `policy_edits` slice changes none of them: a system can
only answer them from the store's knowledge base, not from its weights."""


def builtin_path() -> Path:
    return Path(str(resources.files(__name__).joinpath("harbor_pine_support.jsonl")))


def policy_path() -> Path:
    """The store policy every built-in answer follows: quickstart's knowledge base."""
    return Path(str(resources.files(__name__).joinpath("policy.md")))


def slice_path(name: str) -> Path:
    """A file of evaluation's slices (slices/not_covered.jsonl, slices/policy_edits.json)."""
    return Path(str(resources.files(__name__).joinpath("slices", name)))


def policy_text() -> str:
    return policy_path().read_text(encoding="utf-8")
