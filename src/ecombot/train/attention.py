"""Attention kernel chosen per batch: plain matmul + softmax for short batches on a CPU, SDPA otherwise.

Why: on a CPU, PyTorch's SDPA (its flash kernel) is slower than Transformers' eager attention for the short
sequences of support conversations: whole LoRA training steps on Gemma 3 270M at ~90 tokens were ~5% faster
(2-core Xeon, bf16, measured side by side in one process). Eager attention keeps the batch x heads x length x
length attention weights for backward, so batches whose weights would exceed EAGER_MAX_WEIGHTS stay on SDPA.
GPUs always keep SDPA (or whatever the model was loaded with).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

EAGER_MAX_WEIGHTS = 1 << 22  # batch x heads x length^2: 4M, 16 MB in fp32 per layer (length 362 at batch 8, 4 heads)


def unwrapped(model):
    """The model inside a DDP / FSDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def prefers_eager(config, input_ids: torch.Tensor) -> bool:
    if input_ids.device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    batch, length = input_ids.shape
    return batch * getattr(config, "num_attention_heads", 1) * length * length <= EAGER_MAX_WEIGHTS


@contextmanager
def attention_for(model, input_ids: torch.Tensor):
    """While active, the model attends with the kernel that is faster for this batch's shape."""
    config = unwrapped(model).config
    if not prefers_eager(config, input_ids):
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
