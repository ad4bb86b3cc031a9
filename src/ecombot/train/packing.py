"""Packed rows: which whole tokenized conversations share a row of one fixed token budget (the default batch shape
for training; models.encoding.PackedCollator lays them end to end, PadCollator makes padded batches)."""

from __future__ import annotations

import bisect
import math

# Packed rows are a multiple of this many tokens.
PACK_ALIGN = 64


def pack_budget(lengths: list[int], conversations_per_batch: int) -> int:
    """Tokens per packed row: room for `conversations_per_batch` conversations of mean length, and for the longest."""
    mean = sum(lengths) / len(lengths)
    need = max(conversations_per_batch * mean, max(lengths))
    return math.ceil(need / PACK_ALIGN) * PACK_ALIGN


def pack(lengths: list[int], budget: int) -> list[list[int]]:
    """Group example indices into rows of at most `budget` tokens: best-fit decreasing (longest first, each into
    the fullest row it still fits), which leaves little padding. Deterministic; rows in order of creation."""
    if max(lengths, default=0) > budget:
        raise ValueError(f"a {max(lengths)}-token example does not fit a {budget}-token row")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens left, row number), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            left, row = budget - lengths[i], len(rows) - 1
        else:
            left, row = free.pop(at)
            rows[row].append(i)
            left -= lengths[i]
        bisect.insort(free, (left, row))
    return rows


def packed_rows(examples: list[dict[str, list[int]]], budget: int) -> list[dict]:
    """The training items of a packed run: one per row, each holding whole examples."""
    return [{"examples": [examples[i] for i in row]} for row in pack([len(e["input_ids"]) for e in examples], budget)]
