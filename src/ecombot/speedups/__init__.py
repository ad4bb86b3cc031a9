"""Speed-ups: faster ways to compute exactly what training, evaluation and decoding already compute.

Nothing here changes what a model means (which tokens are scored, which weights are trained): each piece replaces a
computation by a faster one with the same values up to rounding, and is tested against it (int8.py alone rounds
more, as a precision the user picks: `precision: int8`). `apply` puts them on a
model and says what it changed; `ECOMBOT_SPEEDUPS=0` turns every one of them off (then the model runs
Transformers', PEFT's and PyTorch's own code), `ECOMBOT_CPU_KERNELS=0` only the compiled C kernels. One training
choice uses attention.py's kernel whatever the switch says, since it needs it: answer-only backward
(`prompt_gradients: false`, models/loss.py).

| piece        | what it replaces                                                        | modes         |
|--------------|-------------------------------------------------------------------------|---------------|
| lora.py      | PEFT's LoRA forward/backward (one fused function, bf16 inputs kept)     | train         |
| norm.py      | Gemma's RMSNorm (lean backward; C kernel on CPUs, bf16 or fp32)         | train         |
| mlp.py       | GELU(gate) * up (C kernel on CPUs, bf16 or fp32)                        | train         |
| attention.py | attention over a packed row / short CPU batches (and a row's answer     | train, decode |
|              | tokens over keys/values recorded without autograd)                      |               |
| head.py      | output head + cross-entropy of the answer tokens (one pass, no logits); | train, decode |
|              | in decoding, the head over generate's last positions as a 2-D matmul    |               |
|              | (weight-major `W @ xᵀ` for a few fp32 rows on a CPU)                    |               |
| lowbit.py    | one-token decoding steps with int8/int4 weights (bf16; fp32 on AVX-512) | decode        |
| int8.py      | the frozen base's input gradients in int8 for fp32 CPU training         | train         |
|              | (precision int8: not the same values up to rounding, a precision)       |               |

cpu.py says what the CPU can do (native bf16 or not): which pieces pay, and the precision models train in.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field
from typing import Callable

import torch

from ecombot.speedups import head, int8, kernels
from ecombot.speedups.attention import attention_for, unwrapped

MODES = ("train", "decode")
MARK = "_ecombot_speedups"  # attribute of the (unwrapped) model: the Applied record


@dataclass
class Applied:
    """What `apply` changed on a model (recorded in a run's run_config.json)."""

    mode: str
    changed: dict[str, int] = field(default_factory=dict)  # piece -> modules changed (1 for per-model pieces)
    cpu_kernels: str = "not used"  # kernels.status() where the C kernels can run, else why not
    off: str | None = None  # why nothing was applied

    def to_dict(self) -> dict:
        return {"mode": self.mode, "changed": dict(self.changed), "cpu_kernels": self.cpu_kernels, "off": self.off}


def enabled() -> bool:
    return os.environ.get("ECOMBOT_SPEEDUPS", "1") != "0"


def patch_forward(model: torch.nn.Module, wants: Callable[[torch.nn.Module], bool], forward: Callable) -> int:
    """Give every module of `model` for which `wants(module)` holds the bound method `forward`; returns how many.

    An instance attribute, so the module's class (and every other model using it) is left untouched."""
    changed = 0
    for module in model.modules():
        if wants(module):
            module.forward = types.MethodType(forward, module)
            changed += 1
    return changed


def apply(model: torch.nn.Module, mode: str = "train", low_bit: int | None = None,
          int8_gradients: bool = False) -> Applied:
    """Put the speed-ups of `mode` on `model` (a PEFT or plain Transformers model); safe to call again.

    train: every LoRA layer, norm and MLP of the model; per-batch attention and the fused head in the loss.
    decode: per-batch attention and the fused head when scoring, the output head as one 2-D matmul over the
    positions `generate` keeps; with `low_bit` 8 or 4, one-token steps of a bf16 CPU model (or an fp32 one where the
    CPU has AVX-512) with int8 (or int4) weights — call it then only once every adapter is loaded. `int8_gradients`
    (train, precision int8): the frozen base's input gradients of an fp32 CPU model in int8 (int8.py).
    """
    from ecombot.speedups import lora, lowbit, mlp, norm

    if mode not in MODES:
        raise ValueError(f"speed-up mode must be one of {MODES}, got {mode!r}")
    base = unwrapped(model)
    applied: Applied = getattr(base, MARK, None) or Applied(mode)
    if not enabled():
        applied.off = "switched off (ECOMBOT_SPEEDUPS=0)"
        return applied
    changed = applied.changed
    changed.update(attention=1, fused_head=1)
    parameter = next(model.parameters(), None)
    cpu_dtype = parameter.dtype if parameter is not None and parameter.device.type == "cpu" else None  # None: GPU
    if mode == "train":
        changed["lora"] = lora.use_fused_lora(model)
        computes_in_bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
        changed["lora_bf16_inputs"] = lora.keep_activations_in_bf16(model) if computes_in_bf16 else 0
        changed["norms"] = norm.use_lean_norms(model)
        changed["mlp"] = mlp.use_fused_mlp(model)
        if int8_gradients and cpu_dtype == torch.float32 and int8.pays():
            changed["int8_gradients"] = lora.use_int8_gradients(model)
    output = model.get_output_embeddings()
    if mode == "decode" and isinstance(output, torch.nn.Linear):
        changed["flat_head"] = patch_forward(model, lambda module: module is output, head.flat_head_forward)
    low_bit_pays = cpu_dtype == torch.bfloat16 or (cpu_dtype == torch.float32 and lowbit.fp32_pays())
    if low_bit in (4, 8) and low_bit_pays and lowbit.kernels_available() and not changed.get("low_bit"):
        changed["low_bit"] = lowbit.use_low_bit_decoding(model, low_bit)
    if mode == "train" and cpu_dtype in kernels.SUFFIXES:
        applied.cpu_kernels = kernels.status()
    setattr(base, MARK, applied)
    return applied


def applied_to(model: torch.nn.Module) -> Applied | None:
    return getattr(unwrapped(model), MARK, None)


def forward_losses(model, inputs: dict, targets: torch.Tensor, cu_seq_lens: torch.Tensor | None) -> torch.Tensor | None:
    """The answer tokens' cross-entropy through the model's forward with the speed-ups on it, or None for a model
    without them (models/loss.py then runs the model's own forward)."""
    if not is_applied(model):
        return None
    with attention_for(model, inputs["input_ids"], cu_seq_lens):
        return head.forward_losses(model, inputs, targets)


def is_applied(model) -> bool:
    applied = applied_to(model)
    return applied is not None and bool(applied.changed)
