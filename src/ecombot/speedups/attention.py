"""Attention kernels chosen per batch: packed rows attend within each conversation; short padded batches on a
CPU use plain matmul + softmax; everything else keeps the model's own kernel (SDPA).

Why the packed kernel is written here: a packed batch is one row of whole conversations laid end to end (see
models.PackedCollator). Transformers' own eager/SDPA path would attend over the whole row with a block-diagonal mask
(rows x rows scores: ~8x the attention work of the conversations themselves at 8 per row), and flash-attention's
variable-length kernel does not exist on a CPU. Here the rows of each conversation are gathered into a small padded
batch for the attention only (a few MB of copies), so every projection and MLP runs on the packed row with no
padding while attention costs what it costs for the conversations one by one. The same kernel serves answer-only
backward (models/loss.py, `prompt_gradients: false`): it records a packed row's keys and values in a pass without
autograd, then lets the row's answer tokens alone attend to them (AnswerLayout).

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
        return causal_mask(positions.expand(self.valid.shape), self.valid, dtype, sliding_window)


def causal_mask(query_positions: torch.Tensor, key_valid: torch.Tensor, dtype: torch.dtype,
                sliding_window: int | None) -> torch.Tensor:
    """(conversations, 1, queries, keys) additive mask: 0 where a query at place p in its conversation may see the
    key at place j (j <= p, a real token, inside the window), else -inf. `query_positions` (conversations, queries),
    `key_valid` (conversations, keys)."""
    keys = torch.arange(key_valid.shape[1], device=key_valid.device)
    queries = query_positions[:, :, None]
    allowed = (keys <= queries) & key_valid[:, None, :]
    if sliding_window is not None:
        allowed &= queries - keys < sliding_window
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


@dataclass
class AnswerLayout:
    """A packed row's answer positions attending to the whole row: the queries are the answer tokens only, the keys
    and values every token's, those of the prompt tokens taken from a pass without gradients (`recorded`: layer ->
    (key, value) of the whole row) and those of the answer tokens from this pass.

    This is what answer-only backward (models/loss.py) runs: the prompt (the system prompt, the knowledge passages,
    the question) is computed once without autograd, and the pass that backward goes through holds the answer tokens
    only (~14% of a grounded row's tokens)."""

    row: PackedLayout  # the whole row's conversations (the keys)
    selected: torch.Tensor  # (answers,) row positions of the answer tokens, in order
    index: torch.Tensor  # (conversations x longest answer set) places in `selected`; past the end, its first
    valid: torch.Tensor  # (conversations, longest answer set) bool
    kept: torch.Tensor  # the valid entries of `index`, in order
    query_positions: torch.Tensor  # (conversations, longest answer set): each query's place in its conversation
    recorded: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)

    @classmethod
    def from_selection(cls, cu_seq_lens: torch.Tensor, selected: torch.Tensor) -> "AnswerLayout":
        conversation = torch.searchsorted(cu_seq_lens, selected, right=True) - 1
        counts = torch.bincount(conversation, minlength=len(cu_seq_lens) - 1)
        starts = torch.cumsum(counts, 0) - counts
        offsets = torch.arange(max(int(counts.max()), 1), device=selected.device)
        valid = offsets < counts[:, None]
        index = torch.where(valid, starts[:, None] + offsets, starts[:, None].clamp(max=max(len(selected) - 1, 0)))
        place = selected - cu_seq_lens[conversation]  # each answer token's position inside its conversation
        query_positions = torch.where(valid, place[index], 0)
        return cls(PackedLayout.from_boundaries(cu_seq_lens), selected, index.reshape(-1), valid,
                   valid.reshape(-1).nonzero().squeeze(1), query_positions)

    def additive_mask(self, dtype: torch.dtype, sliding_window: int | None) -> torch.Tensor:
        """(conversations, 1, longest answer set, longest) : causal by the tokens' places in their conversation."""
        key = (dtype, sliding_window)
        if key not in self.masks:
            self.masks[key] = causal_mask(self.query_positions, self.row.valid, dtype, sliding_window)
        return self.masks[key]


_layout: contextvars.ContextVar[PackedLayout | AnswerLayout | None] = contextvars.ContextVar("ecombot_packed_layout",
                                                                                           default=None)
# While a no-grad pass records a packed row's keys and values (layer -> (key, value)), the dict to record into.
_recording: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ecombot_recording", default=None)


def attend(module, q, k, v, mask, dropout: float, scaling: float | None, softcap: float | None) -> torch.Tensor:
    """Attention of per-conversation batches: q (conversations, heads, queries, dim), k and v (conversations,
    kv_heads, keys, dim), an additive mask (conversations, 1, queries, keys) -> (conversations, heads, queries, dim)."""
    conversations, heads, queries, dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    group = heads // kv_heads  # grouped-query attention: query heads per kv head
    scaling = dim ** -0.5 if scaling is None else scaling
    dropout = dropout if module.training else 0.0
    eager = q.device.type == "cpu" and conversations * heads * queries * keys <= EAGER_MAX_WEIGHTS
    if softcap is None and not eager:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                                scale=scaling, enable_gqa=group > 1)
    # The query heads that share a kv head are stacked along the query axis, so k and v are used as they are:
    # copying them per query head (and summing those copies' gradients back) cost 15 ms per step at 576 tokens.
    stacked = q.reshape(conversations, kv_heads, group * queries, dim)
    scores = torch.matmul(stacked, k.transpose(2, 3)).mul_(scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(conversations, kv_heads, group, queries, keys) + mask[:, :, None]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=dropout > 0)
    out = torch.matmul(weights.view(conversations, kv_heads, group * queries, keys), v)
    return out.view(conversations, heads, queries, dim)


def per_conversation(t: torch.Tensor, index: torch.Tensor, conversations: int) -> torch.Tensor:
    """(1, heads, tokens, dim) -> (conversations, heads, longest, dim), gathered by `index`."""
    return t[0].index_select(1, index).view(t.shape[1], conversations, -1, t.shape[-1]).transpose(0, 1)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """Transformers attention interface: query (1, heads, row, dim), key/value (1, kv_heads, row, dim) ->
    (1, row, heads, dim), each conversation of the row attending only to itself. For an AnswerLayout the row holds
    the answer tokens only and the keys are completed from the recorded pass."""
    layout = _layout.get()
    if isinstance(layout, AnswerLayout):
        return answer_attention(layout, module, query, key, value, dropout, scaling, sliding_window, softcap)
    recording = _recording.get()
    if recording is not None:
        recording[module.layer_idx] = (key, value)
    heads, row, dim = query.shape[1:]
    conversations = layout.valid.shape[0]
    q, k, v = (per_conversation(t, layout.index, conversations) for t in (query, key, value))
    out = attend(module, q, k, v, layout.additive_mask(q.dtype, sliding_window), dropout, scaling, softcap)
    packed = out.transpose(1, 2).reshape(-1, heads, dim).index_select(0, layout.kept)
    padding = packed.new_zeros((row - layout.tokens, heads, dim))
    return torch.cat([packed, padding])[None], None


def answer_attention(layout: AnswerLayout, module, query, key, value, dropout, scaling, sliding_window, softcap):
    """The answer tokens' attention over the whole row: recorded keys/values, this pass's at the answer positions
    (so gradients reach the answer tokens' own keys and values, not the prompt's)."""
    recorded_key, recorded_value = layout.recorded[module.layer_idx]
    conversations = layout.valid.shape[0]
    heads, dim = query.shape[1], query.shape[3]
    k, v = (per_conversation(full.index_copy(2, layout.selected, mine), layout.row.index, conversations)
            for full, mine in ((recorded_key, key), (recorded_value, value)))
    q = per_conversation(query, layout.index, conversations)
    out = attend(module, q, k, v, layout.additive_mask(q.dtype, sliding_window), dropout, scaling, softcap)
    return out.transpose(1, 2).reshape(-1, heads, dim).index_select(0, layout.kept)[None], None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED, packed_attention)


@contextmanager
def attention_for(model, input_ids: torch.Tensor, cu_seq_lens: torch.Tensor | None = None,
                  layout: PackedLayout | AnswerLayout | None = None, record: dict | None = None):
    """While active, the model attends with the kernel that fits this batch: per conversation for a packed row,
    eager for short padded batches on a CPU, its own otherwise. `layout`: a packed row's layout already built (instead
    of `cu_seq_lens`), or the answer tokens of a recorded row (AnswerLayout); `record`: a dict that receives every
    layer's keys and values of the packed row."""
    config = unwrapped(model).config
    own = getattr(config, "_attn_implementation", None)
    tokens = []
    if cu_seq_lens is not None or layout is not None:
        _register()
        chosen = PACKED
        tokens.append((_layout, _layout.set(layout or PackedLayout.from_boundaries(cu_seq_lens))))
        if record is not None:
            tokens.append((_recording, _recording.set(record)))
    else:
        batch, length = input_ids.shape
        heads = getattr(config, "num_attention_heads", 1)
        eager = own == "sdpa" and prefers_eager(input_ids.device, batch, heads, length)
        chosen = "eager" if eager else own
    config._attn_implementation = chosen
    try:
        yield
    finally:
        config._attn_implementation = own
        for var, token in reversed(tokens):
            var.reset(token)
