"""Causal-LM loss computed only where it is needed.

Why by hand: Gemma's 262k-token vocabulary makes the output head the largest cost of a step, and
the prompt tokens (system prompt, customer question) need no logits at all. Passing a boolean
`logits_to_keep` mask through the model's own forward (Transformers >= 5) projects only the
supervised positions, so the loss is identical to the full-logits loss at a fraction of the cost,
and the call still goes through the (DDP/FSDP-wrapped) model's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CE_CHUNK = 128  # positions per cross-entropy chunk: 128 x 262k vocabulary x fp32 = 134 MB at a time


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Per-token cross-entropy in fp32, `chunk` positions at a time, recomputed in the backward pass.

    Why by hand: with a 262k vocabulary the fp32 copy of the logits, its log-softmax (kept for backward) and
    their gradients are the largest tensors of a step (~1.7 GB at batch 8); in chunks under activation
    checkpointing only one chunk's fp32 tensors exist at a time. Same values as one call (tested).
    """
    chunk = chunk or CE_CHUNK
    if not torch.is_grad_enabled() or not logits.requires_grad or logits.shape[0] <= chunk:
        return _cross_entropy(logits, targets)
    return torch.cat([checkpoint(_cross_entropy, logits[i:i + chunk], targets[i:i + chunk], use_reentrant=False)
                      for i in range(0, logits.shape[0], chunk)])


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Mask of the positions whose next token is supervised (where the model must predict an answer token)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def token_losses(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every supervised token, and the batch row it belongs to."""
    keep = supervised_positions(labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False).logits
    targets = labels[:, 1:][keep[:, :-1]]
    return chunked_cross_entropy(logits, targets), keep.nonzero()[:, 0]


def supervised_loss(model, input_ids, attention_mask, labels, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of token cross-entropies over supervised tokens / num_items (default: their count here)."""
    losses, _ = token_losses(model, input_ids, attention_mask, labels)
    total = losses.sum()
    denominator = losses.numel() if num_items is None else num_items
    if isinstance(denominator, torch.Tensor):
        return total / denominator.to(total.device).clamp(min=1)
    return total / max(denominator, 1)
