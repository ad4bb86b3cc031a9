"""Where to run and in which precision: CUDA when present, bf16 where the hardware does it natively."""

from __future__ import annotations

import torch

from ecombot.speedups.cpu import cpu_has_native_bf16


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(preference: str = "auto", device: str | None = None) -> str:
    """'bf16' or 'fp32'. auto: bf16 on CUDA cards that support it and on CPUs with native bf16."""
    device = device or pick_device()
    if preference != "auto":
        return preference
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"
