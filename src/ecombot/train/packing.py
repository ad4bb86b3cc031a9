"""Packed rows: whole tokenized conversations laid end to end in rows of one fixed token budget (the default batch
shape for training; models.encoding.PadCollator makes padded batches)."""

from __future__ import annotations

import bisect
import math

import torch

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


class PackedCollator:
    """Lay the examples of a batch of packed rows end to end in ONE row of `budget` x rows tokens.

    Every batch then has the same shape, so the CPU's matmul kernels are built once (oneDNN builds one per new row
    count: ~0.2 s per new shape for Gemma 3 270M) and no pad token is computed except the row's tail.
    `position_ids` restart at each example and `cu_seq_lens` marks where each one starts, so attention stays within
    it (Transformers finds the examples from the restarting positions; speedups.attention from `cu_seq_lens`, faster);
    each example's first label is -100, so no token learns to predict the next
    example.
    """

    def __init__(self, pad_token_id: int, budget: int):
        self.pad_token_id = pad_token_id
        self.budget = budget

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        examples = [ex for row in rows for ex in row["examples"]]
        width = self.budget * len(rows)
        ids = torch.full((1, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((1, width), -100, dtype=torch.long)
        positions = torch.zeros((1, width), dtype=torch.long)
        bounds = [0]
        for ex in examples:
            start, n = bounds[-1], len(ex["input_ids"])
            ids[0, start:start + n] = torch.tensor(ex["input_ids"])
            labels[0, start + 1:start + n] = torch.tensor(ex["labels"][1:])
            positions[0, start:start + n] = torch.arange(n)
            bounds.append(start + n)
        if bounds[-1] > width:
            raise ValueError(f"{bounds[-1]} tokens do not fit a packed row of {width}")
        return {"input_ids": ids, "labels": labels, "position_ids": positions,
                "cu_seq_lens": torch.tensor(bounds, dtype=torch.long)}
