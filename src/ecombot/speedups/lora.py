"""LoRA's update `base(x) + scaling * B(A(x))` as one autograd function with a hand-written backward.

Why by hand: PEFT's layer computes the update as separate ops (A, B, a multiply by `scaling`, an add), each a full
pass over the layer's output in forward and again in backward, plus autocast copies of A and B, on each of the 126
adapted projections of Gemma 3 270M. Here the scaling is folded into the rank-r weights and the update is added to
the base output inside one in-place matmul (addmm_); backward computes the rank-r gradient once and reuses it.
For a frozen plain `nn.Linear` base (LoRA, DoRA-free) the base matmul is part of the same function, so backward
adds the adapter's input gradient into the base's in place instead of autograd summing two tensors (one node and
one pass fewer per layer: 0.2-0.4 ms per projection at 576 tokens). Same values as PEFT's layer up to rounding
(tests/test_fused_lora.py). Other base layers (bitsandbytes 4-bit for QLoRA) are called as they are, so their own
backward is untouched.
"""

from __future__ import annotations

import torch

from ecombot.speedups import int8 as int8_products
from ecombot.speedups import patch_forward
from ecombot.speedups.int8 import INT8_GRADIENTS


def _down(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, dtype: torch.dtype):
    """Forward part shared by both functions: input rows, the rank-r activations and the weights in `dtype`."""
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    a_, scaled_b = a.to(dtype), (b * scaling).to(dtype)
    ctx.scaling, ctx.x_shape, ctx.x_dtype, ctx.weight_dtypes = scaling, x.shape, x.dtype, (a.dtype, b.dtype)
    return rows, rows @ a_.t(), a_, scaled_b  # down: (N, r)


def _rank_r_gradients(ctx, grad_out, rows, down, scaled_b, a_index: int):
    """Backward part shared by both functions: the rank-r gradient (reused for x's) and the gradients of a and b."""
    grad = grad_out.reshape(-1, grad_out.shape[-1]).to(rows.dtype)
    grad_down = grad @ scaled_b  # (N, r)
    need_a, need_b = ctx.needs_input_grad[a_index], ctx.needs_input_grad[a_index + 1]
    grad_a = (grad_down.t() @ rows).to(ctx.weight_dtypes[0]) if need_a else None
    grad_b = (grad.t() @ down).mul_(ctx.scaling).to(ctx.weight_dtypes[1]) if need_b else None
    return grad, grad_down, grad_a, grad_b


class LoRAUpdate(torch.autograd.Function):
    """`base_out + scaling * x @ a.T @ b.T` for a (r, in) and b (out, r), in the dtype of `base_out`."""

    @staticmethod
    def forward(ctx, base_out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float):
        rows, down, a_, scaled_b = _down(ctx, x, a, b, scaling, base_out.dtype)
        # In place: the base layer's backward does not need its output, and an out-of-place addmm first copies it
        # (a full pass over e.g. 576 x 2048 for each MLP projection).
        base_out.view(-1, base_out.shape[-1]).addmm_(down, scaled_b.t())
        ctx.mark_dirty(base_out)
        ctx.save_for_backward(rows, down, a_, scaled_b)
        return base_out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, down, a_, scaled_b = ctx.saved_tensors
        _, grad_down, grad_a, grad_b = _rank_r_gradients(ctx, grad_out, rows, down, scaled_b, a_index=2)
        grad_x = (grad_down @ a_).view(ctx.x_shape).to(ctx.x_dtype) if ctx.needs_input_grad[1] else None
        return grad_out, grad_x, grad_a, grad_b, None


class LoRALinear(torch.autograd.Function):
    """`x @ weight.T (+ bias) + scaling * x @ a.T @ b.T` for a frozen weight, computed in `dtype`; with `int8`
    (fp32 CPU training at precision int8, speedups/int8.py) backward's product with the frozen weight runs in int8."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling: float, dtype: torch.dtype, int8: bool = False):
        rows, down, a_, scaled_b = _down(ctx, x, a, b, scaling, dtype)
        w_ = weight.to(dtype)
        out = torch.mm(rows, w_.t()) if bias is None else torch.addmm(bias.to(dtype), rows, w_.t())
        out.addmm_(down, scaled_b.t())
        ctx.int8 = int8
        ctx.save_for_backward(rows, down, w_, a_, scaled_b)
        return out.view(*x.shape[:-1], w_.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, down, w_, a_, scaled_b = ctx.saved_tensors
        grad, grad_down, grad_a, grad_b = _rank_r_gradients(ctx, grad_out, rows, down, scaled_b, a_index=3)
        grad_x = None
        if ctx.needs_input_grad[0]:
            base = int8_products.input_gradient(grad, w_) if ctx.int8 else torch.mm(grad, w_)
            grad_x = base.addmm_(grad_down, a_).view(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _plain_lora_adapter(layer, kwargs) -> str | None:
    """The one active adapter when the layer computes plain LoRA (no dropout, bias, DoRA or mixed batches)."""
    if kwargs.get("adapter_names") is not None or layer.disable_adapters or layer.merged:
        return None
    active = layer.active_adapters
    if len(active) != 1 or active[0] not in layer.lora_A or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity) or layer.lora_B[name].bias is not None:
        return None
    return name


def _frozen_linear(base) -> bool:
    """A base whose matmul LoRALinear computes itself: a plain, frozen nn.Linear."""
    return type(base) is torch.nn.Linear and not base.weight.requires_grad


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = _plain_lora_adapter(self, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    a, b, scaling = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    base = self.base_layer
    if _frozen_linear(base) and not args and not kwargs:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else base.weight.dtype
        int8 = getattr(base, INT8_GRADIENTS, False) and dtype == torch.float32 and device == "cpu"
        return LoRALinear.apply(x, base.weight, base.bias, a, b, scaling, dtype, int8)
    return LoRAUpdate.apply(base(x, *args, **kwargs), x, a, b, scaling)


def use_fused_lora(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA linear layer of `model` the fused update; returns how many were changed.

    A layer that is not plain LoRA at call time (dropout > 0, DoRA, several adapters) runs PEFT's own forward.
    """
    from peft.tuners.lora import LoraLayer

    return patch_forward(model, lambda m: isinstance(m, LoraLayer) and isinstance(getattr(m, "base_layer", None),
                                                                                    torch.nn.Linear), _forward)


def keep_activations_in_bf16(model: torch.nn.Module) -> int:
    """Stop PEFT from copying every LoRA input to fp32 (the adapter weights' dtype) on each call; returns how many
    layers.

    Under bf16 autocast the adapter's matmuls run in bf16 anyway, so the copy to fp32 (and autocast's copy
    back) only moves memory: measured 263 -> 328 tokens/s for LoRA steps on Gemma 3 270M, same losses to
    4 decimals (benchmarks/train_throughput.py; test in tests/test_loss.py).
    """
    changed = 0
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def use_int8_gradients(model: torch.nn.Module) -> int:
    """Mark the frozen base of every LoRA linear layer of `model` that runs the fused update (use_fused_lora, plain
    LoRA: not DoRA, dropout, a bias of B or several adapters, which PEFT's own forward computes): its input gradient
    is then computed in int8 in fp32 CPU training (precision int8, speedups/int8.py). Returns how many layers."""
    changed = 0
    for module in model.modules():
        fused = getattr(getattr(module, "forward", None), "__func__", None) is _forward  # patched LoRA layers only
        if fused and _plain_lora_adapter(module, {}) is not None and _frozen_linear(module.base_layer):
            setattr(module.base_layer, INT8_GRADIENTS, True)
            changed += 1
    return changed
