"""Data stage: read any supported file, validate and de-duplicate it, split it deterministically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ecombot.data.builtin import UNSEEN_INTENTS, builtin_path
from ecombot.data.conversation import Conversation, normalise_text
from ecombot.data.readers import FORMATS, read_file
from ecombot.data.split import (SPLITS, Split, conversations_jsonl, leaked_questions, split_conversations, split_files,
                                stratified_order, write_split)
from ecombot.data.validate import DataReport, clean
from ecombot.errors import DataError


@dataclass
class PreparedData:
    split: Split
    report: DataReport


def load_conversations(path: str | Path | None) -> tuple[list[Conversation], DataReport]:
    """Read and clean one file. None: the built-in dataset without its UNSEEN_INTENTS (evaluation asks them as
    unseen topics, so no split may hold them); a user's file is used whole."""
    convs, report = clean(read_file(path if path is not None else builtin_path()))
    if path is None:
        held = [c for c in convs if c.intent in UNSEEN_INTENTS]
        report.hold_out(held, "unseen topics: evaluation asks them to test answers from the knowledge base alone")
        convs = [c for c in convs if c.intent not in UNSEEN_INTENTS]
    return convs, report


def prepare(path: str | Path | None, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42,
            extra: Callable[[list[Conversation]], list[Conversation]] | None = None) -> PreparedData:
    """The one way every command turns a data file into splits, so the same seed gives the same test set. `extra`:
    conversations made given the file's (a support run's product questions: train/tasks.py), split on their own
    and appended to each split, so the file's split is the one every other command makes from it; one asking a
    question of the file's is left out."""
    convs, report = load_conversations(path)
    if not convs:
        raise DataError(report.path, None, None, f"no usable conversations (dropped: {dict(report.dropped)})")
    split = split_conversations(convs, val_fraction, test_fraction, seed)
    if not split.train:
        raise DataError(report.path, None, None, f"only {len(convs)} usable conversation(s): too few to split")
    if extra:
        asked = {normalise_text(c.question) for c in convs}
        more = split_conversations([c for c in extra(convs) if normalise_text(c.question) not in asked],
                                   val_fraction, test_fraction, seed)
        split = Split(split.train + more.train, split.validation + more.validation, split.test + more.test)
    return PreparedData(split, report)


__all__ = ["Conversation", "DataReport", "FORMATS", "PreparedData", "SPLITS", "Split", "UNSEEN_INTENTS", "builtin_path",
           "clean", "conversations_jsonl", "leaked_questions", "load_conversations", "normalise_text", "prepare", "read_file",
           "split_conversations", "split_files", "stratified_order", "write_split"]
