"""Conversations tokenized with their loss mask, and padded batches of them: what training and evaluation score."""

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
                         prefixes: list[list[dict[str, str]]] | None = None) -> EncodedSet:
    """`prefixes`: per-conversation example turns placed before it (few-shot prompts), never supervised."""
    examples, lengths, truncated, empty = [], [], 0, 0
    for i, conv in enumerate(convs):
        messages = with_system((prefixes[i] if prefixes else []) + conv.messages, system_prompt)
        enc = encode_conversation(tokenizer, messages, max_length, supervise_from=len(messages) - len(conv.messages))
        lengths.append(len(enc.input_ids) if not enc.truncated else max_length + 1)
        truncated += enc.truncated
        if all(label == -100 for label in enc.labels[1:]):
            empty += 1
            continue
        examples.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return EncodedSet(examples, truncated, empty, lengths)


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
