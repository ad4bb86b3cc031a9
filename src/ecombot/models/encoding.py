"""Conversations tokenized with their loss mask, and padded or packed batches of them: what training and evaluation
score."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecombot.data import Conversation
from ecombot.models.template import encode_conversation, with_system


@dataclass
class EncodedSet:
    examples: list[dict[str, list[int]]]
    truncated: int  # conversations cut at max_length (still trained on what remains)
    no_answer_left: int  # conversations whose answer fell entirely past max_length (dropped)
    lengths: list[int]  # token length of every conversation before truncation


def encode_conversations(convs: list[Conversation], tokenizer, system_prompt: str | None, max_length: int,
                         prefixes: list[list[dict[str, str]]] | None = None, keep_end: bool = False) -> EncodedSet:
    """`prefixes`: per-conversation example turns placed before it (few-shot prompts), never supervised. `keep_end`:
    an over-long conversation keeps its end (encode_conversation), as scoring wants."""
    examples, lengths, truncated, empty = [], [], 0, 0
    for i, conv in enumerate(convs):
        messages = with_system((prefixes[i] if prefixes else []) + conv.messages, system_prompt)
        enc = encode_conversation(tokenizer, messages, max_length, supervise_from=len(messages) - len(conv.messages),
                                  keep_end=keep_end)
        lengths.append(len(enc.input_ids) if not enc.truncated else max_length + 1)
        truncated += enc.truncated
        if all(label == -100 for label in enc.labels[1:]):
            empty += 1
            continue
        examples.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return EncodedSet(examples, truncated, empty, lengths)


# How long an answer may run when the command is not told: room for the longest answer in the store's data, a quarter
# over, rounded up to 32 tokens, never below the command's own default (CHAT_ANSWER_TOKENS for chat, serve and
# exports; 160 for evaluate) nor above ANSWER_TOKENS_CAP, which leaves three quarters of the engines' 2,048-token
# context to the prompt (passages, earlier turns, few-shot examples). A fixed limit cut long answers mid-step: 9% of
# the answers of a 3,000-row support CSV written in numbered steps (Bitext's layout) run past evaluate's 160 tokens,
# so even a bot repeating its training answers word for word scored as if it had left their last steps out.
CHAT_ANSWER_TOKENS = 200
ANSWER_TOKENS_CAP = 512


def answer_token_limit(longest: int | None, floor: int) -> int:
    """The answer token budget for data whose longest answer is `longest` tokens (None: unknown, the floor)."""
    if not longest:
        return floor
    return max(floor, min(ANSWER_TOKENS_CAP, -(-longest * 5 // 128) * 32))


def answer_token_counts(tokenizer, answers: list[str]) -> list[int]:
    """Tokens of each answer as the model writes it: its text and the stop token that ends it."""
    return [len(ids) + 1 for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]] if answers else []


class PadCollator:
    """Right-pad a batch; padded positions get attention 0 and label -100 (never trained on)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.tensor(ex["input_ids"])
            labels[row, :n] = torch.tensor(ex["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


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
