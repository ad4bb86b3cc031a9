"""The input gradient of a frozen weight in int8, for LoRA training in fp32 on CPUs without native bf16.

Why: there a training step is fp32 matrix products at the chip's own rate (README, Performance), and every frozen
base layer takes part in two of them: the forward product and, in backward, the gradient of its input. PyTorch's
int8 product (`torch._int_mm`, oneDNN) runs these shapes 3.5-4x faster than fp32 on AVX-512 with VNNI and ~2x
faster under AVX2 (2624 x 2048 @ 2048 x 640: 7.0 vs 26.8 ms; AVX2 forced, 22.0 vs 46.3 ms).

Only backward's product runs in int8; the forward stays fp32. Measured on one packed batch of Gemma 3 270M (16
built-in conversations, LoRA on every linear, the gradient of all adapter weights against fp32's): both products in
int8 gave the loss +0.064 and a 27% gradient error (cosine 0.965) — per-token activations with outlier channels lose
too much (SmoothQuant-style channel scales: 25-30%; the worst ~13 channels per layer kept in fp32: 17%); int8 input
gradients alone leave the loss exact and the gradient error at 5.1%, as bf16 autocast's 4.4%. (A quickstart trained
with both in int8: held-out loss 0.208 against fp32's 0.187.)

The quantization is SwitchBack's (Wortsman et al., 2023, "Stable and low-precision training for large-scale
vision-language models"): the weight symmetric per output channel, the gradient symmetric per row with the weight's
channel scales folded into its columns first (so the int8 weight, out x in, is used as it is), both at each call. The C
kernels (speedups/kernels) quantize the rows and scale the int32 sums back in one pass each: eager PyTorch's eight
ops took longer than the product saved.
"""

from __future__ import annotations

import os

import torch

from ecombot.speedups import kernels
from ecombot.speedups.cpu import cpu_flags

INT8_GRADIENTS = "ecombot_int8_gradients"  # attribute of a frozen nn.Linear: True where its input gradient is int8
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) below VNNI: its int8 kernels then
# saturate as on a CPU without it
ISAS_WITHOUT_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}


def weight_levels() -> int:
    """127 where oneDNN multiplies int8 with VNNI (32-bit sums); 63 elsewhere. Why: without VNNI, oneDNN adds pairs
    of u8 x s8 products into 16 bits with saturation (AVX2's vpmaddubsw), which 8-bit weights overflow: measured
    under forced AVX2, 2.2% error against fp32 vs 1.1% with VNNI; 7-bit weights (1.7%) fit and are exact there."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    capped = cap.upper() in ISAS_WITHOUT_VNNI
    return 127 if {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags() and not capped else 63


def pays() -> bool:
    """oneDNN's int8 products beat fp32 on x86 with AVX2 or better (measured: 3.5-4x with AVX-512 VNNI, ~2x AVX2)
    and the C kernels quantize the rows (eager PyTorch's quantization costs more than the product saves)."""
    return not why_not()


def why_not() -> str:
    """'' where int8 input gradients run here, else why not."""
    if "avx2" not in cpu_flags():
        return "no AVX2"
    return "" if kernels.library() is not None else f"C kernels {kernels.status()}"


def quantize_rows(x: torch.Tensor, col_scales: torch.Tensor | None = None,
                  levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, k) fp32 (times col_scales per column) as int8 rows in [-levels, levels], and each row's scale."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError(f"int8 rows: a 2-D fp32 CPU tensor, got {x.dim()}-D {x.dtype} on {x.device}")
    x = x.contiguous()
    q, row_scales = torch.empty(x.shape, dtype=torch.int8), torch.empty(x.shape[0], dtype=torch.float32)
    kernels.quantize_rows_i8(x, col_scales, q, row_scales, levels)
    return q, row_scales


def input_gradient(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad (n, out) fp32 @ weight (out, in) fp32 -> (n, in) fp32 in int8: the gradient of the layer's input rows.
    The weight is quantized at each call (0.2-0.5 ms for Gemma's largest layer, one pass), so no int8 copy of it
    stays in memory."""
    weight_q, weight_scales = quantize_rows(weight, None, weight_levels())
    q, row_scales = quantize_rows(grad, weight_scales)
    acc = torch._int_mm(q, weight_q)
    out = acc.view(torch.float32)  # the int32 sums become fp32 values in their own memory
    kernels.dequantize_rows_i32(acc, row_scales, out)
    return out
