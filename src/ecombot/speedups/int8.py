"""Int8 matrix products with a frozen weight, for LoRA training in fp32 on CPUs without native bf16.

Why: there a training step is fp32 matrix products at the chip's own rate (README, Performance), and the frozen base
weights take part in two of them per layer (the forward and the input gradient) that need no fp32 precision: the
adapter's own products and gradients stay fp32. PyTorch's int8 product (`torch._int_mm`, oneDNN) runs the same
shapes 3.5-4x faster than fp32 on AVX-512 with VNNI and ~2x faster under AVX2 (2624 x 640 x 2048: 7.2 vs 29.1 ms;
forced AVX2 21.8 vs 47.6 ms). The quantization is SwitchBack's (Wortsman et al., 2023, "Stable and low-precision
training for large-scale vision-language models"): the weight symmetric per output channel, once; activations and
gradients symmetric per row at each call, by the C kernels (speedups/kernels: one pass each, where eager PyTorch's
eight ops took longer than the product saved). In backward the weight's channel scales are folded into the
gradient's columns before its rows are quantized, so the one int8 copy (out x in) serves both products, transposed
in forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecombot.speedups import kernels
from ecombot.speedups.cpu import cpu_flags

INT8_WEIGHT = "ecombot_int8_weight"  # attribute of a frozen nn.Linear: its Int8Weight


def weight_levels() -> int:
    """127 where the CPU multiplies int8 with VNNI (32-bit sums); 63 elsewhere. Why: without VNNI, oneDNN adds pairs
    of u8 x s8 products into 16 bits with saturation (AVX2's vpmaddubsw), which 8-bit weights overflow: measured
    under forced AVX2, 2.2% error against fp32 vs 1.1% with VNNI; 7-bit weights (1.7%) fit and are exact there."""
    return 127 if {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags() else 63


def pays() -> bool:
    """oneDNN's int8 products beat fp32 on x86 with AVX2 or better (measured: 3.5-4x with AVX-512 VNNI, ~1.9x AVX2)
    and the C kernels quantize the rows (eager PyTorch's quantization costs more than the product saves)."""
    return not why_not()


def why_not() -> str:
    """'' where int8 training products run here, else why not."""
    if "avx2" not in cpu_flags():
        return "no AVX2"
    return "" if kernels.library() is not None else f"C kernels {kernels.status()}"


@dataclass(frozen=True)
class Int8Weight:
    """A frozen (out, in) weight as int8 values and one fp32 scale per output channel."""

    values: torch.Tensor  # (out, in) int8
    scales: torch.Tensor  # (out,) fp32

    @classmethod
    def of(cls, weight: torch.Tensor, levels: int = 127) -> "Int8Weight":
        """Symmetric per output channel, values in [-levels, levels]."""
        w = weight.detach().to(torch.float32)
        scales = w.abs().amax(dim=1) / levels
        values = torch.round(w / scales.clamp(min=torch.finfo(torch.float32).tiny)[:, None]).to(torch.int8)
        return cls(values.contiguous(), scales.contiguous())


def _quantize_rows(x: torch.Tensor, col_scales: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    rows, cols = x.shape
    q, row_scales = torch.empty((rows, cols), dtype=torch.int8), torch.empty(rows, dtype=torch.float32)
    kernels.quantize_rows_i8(x, col_scales, q, row_scales)
    return q, row_scales


def _product(q: torch.Tensor, row_scales: torch.Tensor, w: torch.Tensor, col_scales: torch.Tensor | None):
    acc = torch._int_mm(q, w)
    out = acc.view(torch.float32)  # the int32 sums become fp32 values in their own memory
    kernels.dequantize_rows_i32(acc, row_scales, col_scales, out)
    return out


def linear(rows: torch.Tensor, weight: Int8Weight) -> torch.Tensor:
    """rows (n, in) fp32 @ weight.T -> (n, out) fp32."""
    q, row_scales = _quantize_rows(rows, None)
    return _product(q, row_scales, weight.values.t(), weight.scales)


def input_gradient(grad: torch.Tensor, weight: Int8Weight) -> torch.Tensor:
    """grad (n, out) fp32 @ weight -> (n, in) fp32: the gradient of `linear`'s rows."""
    q, row_scales = _quantize_rows(grad, weight.scales)
    return _product(q, row_scales, weight.values, None)
