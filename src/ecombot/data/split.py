"""Seeded train/validation/test split, stratified by intent, with no question shared across splits."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ecombot import atomic
from ecombot.data.conversation import Conversation, normalise_text

SPLITS = ("train", "validation", "test")


@dataclass
class Split:
    train: list[Conversation]
    validation: list[Conversation]
    test: list[Conversation]

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}


def split_conversations(convs: list[Conversation], val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Conversations sharing a normalised first question form one group and land in the same split.

    Stratification (`ranked_groups`): cutting the ranked groups at the global fractions gives every intent (close to)
    the same share in each split, even for intents with few examples. Within a split the groups' members come in
    rounds (`interleaved`), so any first N of a split are a stratified sample too: evaluate scores the first 200 test
    questions, training validates on the first 100.
    """
    ordered = ranked_groups(convs, seed)
    n_test, n_val = round(len(ordered) * test_fraction), round(len(ordered) * val_fraction)
    return Split(train=interleaved(ordered[n_test + n_val:]), validation=interleaved(ordered[n_test:n_test + n_val]),
                 test=interleaved(ordered[:n_test]))


def ranked_groups(convs: list[Conversation], seed: int) -> list[list[Conversation]]:
    """The groups of conversations that share a normalised first question, ordered so that every intent is spread
    evenly: within each intent the groups are shuffled, and each gets the rank (k + 0.5) / n_intent."""
    rng = random.Random(seed)
    groups: dict[str, list[Conversation]] = defaultdict(list)
    for conv in convs:
        groups[normalise_text(conv.question)].append(conv)
    by_intent: dict[str, list[list[Conversation]]] = defaultdict(list)
    for key in sorted(groups):
        by_intent[groups[key][0].intent or ""].append(groups[key])
    ranked = []
    for intent in sorted(by_intent):
        members = by_intent[intent]
        rng.shuffle(members)
        ranked += [((k + 0.5) / len(members), rng.random(), g) for k, g in enumerate(members)]
    ranked.sort(key=lambda item: item[:2])
    return [g for _, _, g in ranked]


def stratified_order(convs: list[Conversation], seed: int) -> list[Conversation]:
    """The conversations in the order a split keeps them, so that any first N span the intents: for a test file of
    the user's, which is often sorted by intent (the public Bitext set is), where its first N would be one or two."""
    return interleaved(ranked_groups(convs, seed))


def interleaved(groups: list[list[Conversation]]) -> list[Conversation]:
    """Every group's first member in order, then every group's second, and so on. Why: support logs repeat questions
    word for word (a 3,000-row CSV shaped like Bitext's: ~9 rows per question), and whole groups one after another
    put only 3 of its 27 intents in the first 32 test questions."""
    rounds = sorted((i, k) for k, group in enumerate(groups) for i in range(len(group)))
    return [groups[k][i] for i, k in rounds]


def leaked_questions(train: list[Conversation], other: list[Conversation]) -> list[str]:
    """Normalised questions of `other` that also appear in `train` (must be empty for an honest test)."""
    seen = {normalise_text(c.question) for c in train}
    return sorted({normalise_text(c.question) for c in other} & seen)


def conversations_jsonl(conversations: list[Conversation]) -> str:
    """Conversations as chat JSONL, readable by every ecombot command."""
    return "".join(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in conversations)


def split_files(split: Split) -> dict[str, str]:
    """train/validation/test as chat JSONL, by file name."""
    return {f"{name}.jsonl": conversations_jsonl(getattr(split, name)) for name in SPLITS}


def write_split(split: Split, output: str | Path, extra: dict | None = None) -> Path:
    """Write the split files plus split.json."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for name, text in split_files(split).items():
        atomic.write_text(output / name, text)
    info = {"counts": split.counts(), "leaked_test_questions": len(leaked_questions(split.train, split.test)),
            "leaked_validation_questions": len(leaked_questions(split.train, split.validation)), **(extra or {})}
    atomic.write_json(output / "split.json", info)
    return output
