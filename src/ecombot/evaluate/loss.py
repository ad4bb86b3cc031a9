"""Held-out loss: mean cross-entropy per answer token on conversations the model never trained on."""

from __future__ import annotations

import math

import torch

from ecombot.data import Conversation
from ecombot.train.data import PadCollator, encode_conversations
from ecombot.train.loss import supervised_loss


@torch.inference_mode()
def heldout_loss(model, tokenizer, convs: list[Conversation], system_prompt: str | None, max_length: int = 512,
                 batch_size: int = 16) -> dict[str, float]:
    """Token-weighted mean loss over all answer tokens, and its perplexity."""
    examples = encode_conversations(convs, tokenizer, system_prompt, max_length).examples
    if not examples:
        raise ValueError("no conversation with answer tokens to score")
    collate = PadCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(supervised_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])) * n
        tokens += n
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": tokens}
