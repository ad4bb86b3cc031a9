"""Validation and de-duplication: every dropped conversation is counted with its reason and location."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecombot.data.conversation import ROLE_ALIASES, Conversation, normalise_text
from ecombot.data.readers import RawFile

MAX_EXAMPLES_PER_REASON = 3


@dataclass
class DataReport:
    """What a data file held and what was done with it; printed by `ecombot data inspect`, saved with each run."""

    path: str
    format: str
    read_from: str | None = None
    rows_read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few "file:line"
    intents: Counter = field(default_factory=Counter)
    multi_turn: int = 0
    token_percentiles: dict[str, int] = field(default_factory=dict)
    answer_tokens: dict[str, int] = field(default_factory=dict)  # percentiles of the trained answers' lengths
    truncated: int = 0
    max_length: int | None = None
    held_out: dict = field(default_factory=dict)  # {"intents", "conversations", "reason"}: kept out of every split

    def hold_out(self, held: list[Conversation], reason: str) -> None:
        """Take kept conversations out of the counts (they are read, valid, and deliberately not used)."""
        self.kept -= len(held)
        self.multi_turn -= sum(len(c.messages) > 2 for c in held)
        self.intents.subtract(c.intent for c in held)
        self.intents = +self.intents
        intents = sorted({c.intent or "" for c in held})
        self.held_out = {"intents": intents, "conversations": len(held), "reason": reason}

    @property
    def read_as(self) -> str:
        """Its format and, where ecombot chose among its parts, which: "csv, columns a (customer) and b (answer)"."""
        return f"{self.format}, {self.read_from}" if self.read_from else self.format

    @property
    def read_unit(self) -> str:
        """What `rows_read` counts: rows, or the threads of a one-message-per-row export (its rows are messages)."""
        return "threads" if self.format.endswith("-threads") else "rows"

    def summary_line(self) -> str:
        """What a command that trains on the file says of it: where the pairs came from, how many were kept, and
        every row left out with its reason and first places (`data inspect` shows the same as a table)."""
        name = Path(self.path).name
        line = f"{name} ({self.read_as}): {self.kept} of {self.rows_read} conversations kept"
        if self.held_out:
            line += f"; {self.held_out['conversations']} held out ({self.held_out['reason']})"
        for reason, count in self.dropped.most_common():
            places = self.dropped_examples[reason]
            line += f"; left out, {reason}: {count} ({', '.join(places)}{', …' if count > len(places) else ''})"
        return line

    def drop(self, conv: Conversation, reason: str) -> None:
        self.dropped[reason] += 1
        examples = self.dropped_examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES_PER_REASON:
            examples.append(conv.source)

    def add_token_lengths(self, lengths: list[int], max_length: int) -> None:
        self.token_percentiles = _percentiles(lengths)
        self.truncated = sum(n > max_length for n in lengths)
        self.max_length = max_length

    def add_answer_lengths(self, lengths: list[int]) -> None:
        """What chat and serve size their answers by (models.answer_token_limit)."""
        self.answer_tokens = _percentiles(lengths)

    def to_dict(self) -> dict:
        return {
            "path": self.path, "format": self.format, "read_from": self.read_from, "rows_read": self.rows_read,
            "kept": self.kept,
            "dropped": dict(self.dropped), "dropped_examples": self.dropped_examples,
            "intents": dict(self.intents.most_common()), "multi_turn": self.multi_turn,
            "token_percentiles": self.token_percentiles, "truncated": self.truncated, "max_length": self.max_length,
            **({"answer_tokens": self.answer_tokens} if self.answer_tokens else {}),
            **({"held_out": self.held_out} if self.held_out else {}),
        }


def _percentiles(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {}
    qs = np.percentile(np.asarray(lengths), [50, 90, 95, 99, 100])
    return {k: int(round(v)) for k, v in zip(("p50", "p90", "p95", "p99", "max"), qs)}


def _problem(conv: Conversation) -> str | None:
    """Why a conversation cannot be trained on, or None. Normalises role spellings in place."""
    messages = []
    for m in conv.messages:
        role = ROLE_ALIASES.get(m["role"])
        if role is None:
            return f"unknown role '{m['role']}'"
        if not m["content"]:
            if role == "system":
                continue
            return "empty answer" if role == "assistant" else "empty question"
        messages.append({"role": role, "content": m["content"]})
    if any(m["role"] == "system" for m in messages[1:]):
        return "system message after the first turn"
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns or turns[0]["role"] != "user":
        return "does not start with a user turn"
    if any(a["role"] == b["role"] for a, b in zip(turns, turns[1:])):
        return "roles do not alternate between user and assistant"
    if turns[-1]["role"] != "assistant":
        return "does not end with an assistant turn"
    conv.messages = messages
    return None


def clean(raw: RawFile) -> tuple[list[Conversation], DataReport]:
    """Drop invalid conversations and duplicates (exact, then after normalising text), counting each."""
    report = DataReport(path=str(raw.path), format=raw.format, read_from=raw.read_from,
                        rows_read=len(raw.conversations))
    kept: list[Conversation] = []
    exact_seen: set[str] = set()
    normal_seen: set[str] = set()
    for conv in raw.conversations:
        reason = _problem(conv)
        if reason is None:
            exact = json.dumps(conv.messages, sort_keys=True)
            normal = "\x1f".join(normalise_text(m["content"]) for m in conv.messages)
            if exact in exact_seen:
                reason = "exact duplicate"
            elif normal in normal_seen:
                reason = "duplicate after normalising case, punctuation and spaces"
            exact_seen.add(exact)
            normal_seen.add(normal)
        if reason is not None:
            report.drop(conv, reason)
            continue
        kept.append(conv)
    report.kept = len(kept)
    report.intents = Counter(c.intent for c in kept if c.intent is not None)
    report.multi_turn = sum(len(c.answers) > 1 for c in kept)
    return kept, report
