"""Attention kernels chosen per batch: packed rows attend within each conversation; short padded batches on a
CPU use plain matmul + softmax; everything else keeps the model's own kernel (SDPA).

Why the packed kernel is written here: a packed batch is one row of whole conversations laid end to end (see
data.PackedCollator). Transformers' own eager/SDPA path would attend over the whole row with a block-diagonal mask
(rows x rows scores: ~8x the attention work of the conversations themselves at 8 per row), and flash-attention's
variable-length kernel does not exist on a CPU. Here the rows of each conversation are gathered into a small padded
batch for the attention only (a few MB of copies), so every projection and MLP runs on the packed row with no
padding while attention costs what it costs for the conversations one by one.

Eager vs SDPA on a CPU: PyTorch's SDPA (its flash kernel) is slower than plain matmul + softmax for the short
sequences of support conversations: whole LoRA training steps on Gemma 3 270M at ~90 tokens were ~5% faster
(2-core Xeon, bf16, measured side by side in one process). Eager attention keeps the conversations x heads x
length x length weights for backward, so batches whose weights would exceed EAGER_MAX_WEIGHTS use SDPA.
GPUs always use SDPA.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

EAGER_MAX_WEIGHTS = 1 << 22  # batch x heads x length^2: 4M, 16 MB in fp32 per layer (length 362 at batch 8, 4 heads)
PACKED = "ecombot_packed"


def unwrapped(model):
    """The model inside a DDP / FSDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def prefers_eager(device: torch.device, batch: int, heads: int, length: int) -> bool:
    return device.type == "cpu" and batch * heads * length * length <= EAGER_MAX_WEIGHTS


@dataclass
class PackedLayout:
    """Where each conversation of a packed row lies. Gathers use index_select (its backward, index_add, took half
    the time of advanced indexing's index_put on a CPU)."""

    index: torch.Tensor  # (conversations x longest) row positions; past a conversation's end its first (masked)
    valid: torch.Tensor  # (conversations, longest) bool
    kept: torch.Tensor  # the valid entries of `index`, in order: positions 0 .. tokens-1 of the row
    tokens: int  # positions covered by conversations; the rest of the row is padding
    masks: dict = field(default_factory=dict)  # (dtype, sliding window) -> mask: built once per batch, not per layer

    @classmethod
    def from_boundaries(cls, cu_seq_lens: torch.Tensor) -> "PackedLayout":
        starts, lengths = cu_seq_lens[:-1], cu_seq_lens.diff()
        offsets = torch.arange(int(lengths.max()), device=cu_seq_lens.device)
        valid = offsets < lengths[:, None]
        index = torch.where(valid, starts[:, None] + offsets, starts[:, None]).reshape(-1)
        return cls(index, valid, valid.reshape(-1).nonzero().squeeze(1), int(cu_seq_lens[-1]))

    def additive_mask(self, dtype: torch.dtype, sliding_window: int | None) -> torch.Tensor:
        """(conversations, 1, longest, longest): 0 where query i may see key j (causal, inside the window), else -inf."""
        key = (dtype, sliding_window)
        if key not in self.masks:
            self.masks[key] = self._build_mask(dtype, sliding_window)
        return self.masks[key]

    def _build_mask(self, dtype: torch.dtype, sliding_window: int | None) -> torch.Tensor:
        positions = torch.arange(self.valid.shape[1], device=self.valid.device)
        allowed = (positions[None, :] <= positions[:, None]) & self.valid[:, None, :]
        if sliding_window is not None:
            allowed &= positions[:, None] - positions[None, :] < sliding_window
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


_layout: contextvars.ContextVar[PackedLayout | None] = contextvars.ContextVar("ecombot_packed_layout", default=None)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """Transformers attention interface: query (1, heads, row, dim), key/value (1, kv_heads, row, dim) ->
    (1, row, heads, dim), each conversation of the row attending only to itself."""
    layout = _layout.get()
    heads, row, dim = query.shape[1:]
    conversations, longest = layout.valid.shape
    # (conversations, heads, longest, dim)
    gather = lambda t: t[0].index_select(1, layout.index).view(t.shape[1], conversations, longest, dim).transpose(0, 1)
    q, k, v = gather(query), gather(key), gather(value)
    kv_heads = k.shape[1]
    group = heads // kv_heads  # grouped-query attention: query heads per kv head
    scaling = dim ** -0.5 if scaling is None else scaling
    mask = layout.additive_mask(q.dtype, sliding_window)
    dropout = dropout if module.training else 0.0
    if softcap is None and not prefers_eager(q.device, *q.shape[:3]):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                               scale=scaling, enable_gqa=group > 1)
    else:
        # The query heads that share a kv head are stacked along the query axis, so k and v are used as they are:
        # copying them per query head (and summing those copies' gradients back) cost 15 ms per step at 576 tokens.
        stacked = q.reshape(conversations, kv_heads, group * longest, dim)
        scores = torch.matmul(stacked, k.transpose(2, 3)).mul_(scaling)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.view(conversations, kv_heads, group, longest, longest) + mask[:, :, None]
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        weights = torch.nn.functional.dropout(weights, p=dropout, training=dropout > 0)
        out = torch.matmul(weights.view(conversations, kv_heads, group * longest, longest), v)
        out = out.view(conversations, heads, longest, dim)
    packed = out.transpose(1, 2).reshape(conversations * longest, heads, dim).index_select(0, layout.kept)
    padding = packed.new_zeros((row - layout.tokens, heads, dim))
    return torch.cat([packed, padding])[None], None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED, packed_attention)


@contextmanager
def attention_for(model, input_ids: torch.Tensor, cu_seq_lens: torch.Tensor | None = None):
    """While active, the model attends with the kernel that fits this batch: per conversation for a packed row,
    eager for short padded batches on a CPU, its own otherwise."""
    config = unwrapped(model).config
    own = getattr(config, "_attn_implementation", None)
    if cu_seq_lens is not None:
        _register()
        chosen, token = PACKED, _layout.set(PackedLayout.from_boundaries(cu_seq_lens))
    else:
        batch, length = input_ids.shape
        heads = getattr(config, "num_attention_heads", 1)
        eager = own == "sdpa" and prefers_eager(input_ids.device, batch, heads, length)
        chosen, token = ("eager" if eager else own), None
    config._attn_implementation = chosen
    try:
        yield
    finally:
        config._attn_implementation = own
        if token is not None:
            _layout.reset(token)
