"""Low-bit weights for one-token decoding on CPU (int8, or int4 in groups of 64).

Why by hand: decoding one token at a time multiplies a single row by every weight matrix, which is bound by
memory bandwidth, and this CPU's bf16 matrix-vector product is slow. Measured for the 262k x 640 output head:
bf16 21 ms, fp32 24 ms, PyTorch's int8 weight-only kernel 13 ms, its int4 kernel 4.5 ms. Batched calls
(prompts, several requests at once) keep the bf16 weights, where AMX beats both kernels. Weights are
quantized once at load time: int8 per output channel (symmetric); int4 per group of 64 inputs (asymmetric,
like the Q4 GGUF the default model ships as).

Models kept in fp32 (CPUs without native bf16) get the same kernels where the CPU has AVX-512 (`fp32_pays`): the
one-token row is rounded to bf16 for them (their fp32-activation forms are slower than fp32 itself: head 93 / 202 ms
vs 26 ms) and prompts keep the fp32 weights, 4-5x faster than emulated bf16 there. Measured on a 2-core Xeon with
AVX-512 but no BF16, head: fp32 26 ms, int8 with a bf16 row 12.4 ms, int4 6.2 ms; a 2048 x 640 layer 0.10 vs
0.06 ms.

The output head (62% of Gemma 3 270M's weights) gets int4 in groups of 32 in both low-bit modes: with an int8
body that measured 36.7 tok/s vs 28.0 for all-int8, held-out loss through the decoding path 2.897 vs 2.883
(bf16: 2.876; groups of 64: 2.943, of 128: 2.968) — benchmarks/inference.py, when its loss still scored an <eos> after
each answer (~0.6 per token in every row); since the fix: bf16 3.496, int8 body + int4 head 3.508.
"""

from __future__ import annotations

import torch
from torch import nn

from ecombot.speedups.cpu import cpu_flags
from ecombot.speedups.head import linear_rows

INT4_GROUP = 64
HEAD_INT4_GROUP = 32
# An fp32 model answers batched decoding steps (one row per request being answered) of up to this many rows with
# the kernels too: measured on the 2-core Xeon with AVX-512 but no BF16, the 262k x 640 head in fp32 vs int4 with
# bf16 rows, 2 rows 26 vs 7.8 ms, 4: 52 vs 10.9, 8: 83 vs 22.9, 16: 55 vs 42.7; a whole step of Gemma 3 270M with
# its adapter, 2 / 4 / 8 rows: fp32 62 / 98 / 137 ms, int4 head 48 / 62 / 85, int8 body too 40-41 / 48-50 / 75-77
# (the MLP's 2048-wide layers gain, attention's small ones neither gain nor lose). bf16 models keep one row: on
# CPUs with native bf16, batched bf16 products beat the kernels.
FP32_LOW_BIT_ROWS = 8
FP32_HEAD_LOW_BIT_ROWS = 16


def kernels_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm") and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def fp32_pays() -> bool:
    """Low-bit one-token steps for an fp32 model: measured faster on AVX-512 (bf16 rows). On AVX2 (forced) the
    kernels with fp32 rows were 3-4x slower than fp32 (README, Performance); bf16 rows there are not measured."""
    return {"avx512f", "avx512bw", "avx512vl"} <= cpu_flags()


class LowBitDecodeLinear(nn.Module):
    """A Linear whose calls of up to `most_rows` rows use int8/int4 copies of its weights; every other call (and
    every call with gradients) uses the original."""

    def __init__(self, linear: nn.Linear, bits: int = 8, group: int = INT4_GROUP, most_rows: int = 1):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared, not copied (tied embeddings stay tied)
        self.bits = 4 if bits == 4 and self.in_features % group == 0 and self.out_features % 16 == 0 else 8
        self.group = group
        self.most_rows = most_rows  # calls of up to this many rows (a batched decoding step) use the kernels
        # the kernels' row and scales: bf16 for an fp32 model too (see above)
        kernel_dtype = torch.bfloat16 if linear.weight.dtype == torch.float32 else linear.weight.dtype
        with torch.no_grad():
            w = linear.weight.detach().float()
            if self.bits == 8:
                scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
                packed = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
                params = scale.to(kernel_dtype)
            else:
                groups = w.reshape(self.out_features, -1, group)
                low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
                scale = ((high - low) / 15).clamp(min=1e-8)
                q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(self.out_features, -1)
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
                middle = low + 8 * scale  # the kernel computes (q - 8) * scale + middle
                params = torch.stack([scale.squeeze(-1).t(), middle.squeeze(-1).t()], dim=-1).contiguous()
                params = params.to(kernel_dtype)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("params", params, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > self.most_rows * x.shape[-1] or torch.is_grad_enabled() or x.dtype != self.weight.dtype:
            return linear_rows(x, self.weight, self.bias)
        row = x.reshape(-1, x.shape[-1]).to(self.params.dtype)  # an fp32 model's rows in bf16
        if self.bits == 8:
            out = torch.ops.aten._weight_int8pack_mm(row, self.packed, self.params)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(row, self.packed, self.group, self.params)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_low_bit_decoding(model: nn.Module, bits: int = 8) -> int:
    """Swap every Linear of the base model (LoRA's own small matrices excluded); returns how many.

    `bits` is for the body; the output head always gets int4 in groups of HEAD_INT4_GROUP (see above), and an fp32
    model answers batched steps of a few rows with the kernels too (FP32_LOW_BIT_ROWS).
    Load every adapter first: PEFT cannot add a LoRA layer around a swapped module.
    """
    head = model.get_output_embeddings()
    fp32 = head.weight.dtype == torch.float32
    rows, head_rows = (FP32_LOW_BIT_ROWS, FP32_HEAD_LOW_BIT_ROWS) if fp32 else (1, 1)
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        if ".lora_" in f".{parent_name}":
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and not name.startswith("lora_"):
                if child is head:
                    low_bit = LowBitDecodeLinear(child, 4, HEAD_INT4_GROUP, most_rows=head_rows)
                    # what models/vocab.py marked on the head (the tokens no answer may contain) stays on it
                    low_bit.__dict__.update({k: v for k, v in vars(child).items() if k in ("never_output", "stop_ids")})
                else:
                    low_bit = LowBitDecodeLinear(child, bits, most_rows=rows)
                setattr(parent, name, low_bit)
                swapped += 1
    return swapped
