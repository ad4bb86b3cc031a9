"""The cross-entropy of the supervised positions (models/loss.py), with the output head fused into it.

Why by hand: even the supervised positions' logits are big (376 answer tokens x 262k x bf16 = 197 MB, and as much
again for their gradient). The cross-entropy's gradient with respect to the logits is known in the
forward pass (softmax - one_hot), so both functions below compute it there and keep only what backward
needs. The fused head goes further: it walks the vocabulary once in chunks, keeping a running
log-sum-exp and a running softmax @ weight (the online softmax of flash attention), so only one small
chunk of logits ever exists; backward gets the gradient of the hidden states (N x 640).
Same values as PyTorch's cross_entropy (tests/test_loss.py). Tokens the head marks `never_output` (models/vocab.py:
look-alikes of the end-of-turn token, which no answer may contain) are left out of the softmax, as decoding leaves
them out, except at a position whose target is one of them (left_out).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F

from ecombot.speedups import cpu, kernels
from ecombot.speedups.attention import unwrapped

# fp32 elements of one cross-entropy block. On a CPU a 16 MB block (16 rows of Gemma's 262k vocabulary) stays in
# cache across the passes over it: 0.17 s for 376 x 262k logits forward + backward vs 0.46 s with 128-row blocks
# and 0.98 s for cross_entropy on 128-row checkpointed slices (2-core Xeon, bf16 logits). A GPU wants fewer, larger
# kernels.
CE_BLOCK_ELEMENTS = {"cpu": 1 << 22, "other": 1 << 25}
# Vocabulary columns per chunk of the fused head, and rows per pass over the vocabulary. 376 answer tokens of
# Gemma 3 270M, loss + gradient of the hidden states: 0.27 s with 4096-column chunks, 0.30 s with 2048, vs 0.43 s
# for 128-row blocks of full-vocabulary logits (2-core Xeon, bf16).
HEAD_VOCAB_CHUNK = {"cpu": 4096, "other": 32768}
HEAD_ROW_BLOCK = 2048


def ce_block_rows(logits: torch.Tensor) -> int:
    return max(1, CE_BLOCK_ELEMENTS["cpu" if logits.device.type == "cpu" else "other"] // logits.shape[-1])


def left_out(head: torch.nn.Module | None, targets: torch.Tensor) -> torch.Tensor | None:
    """The head's `never_output` ids (models/vocab.py) on the targets' device; None: nothing is left out. A row
    whose target is one of them keeps that column (a token the data holds is scored as written), every other row
    leaves it out: a row's loss does not depend on the rest of its batch."""
    ids = getattr(head, "never_output", None)
    return ids.to(targets.device) if ids is not None and len(ids) else None


def lookalike_losses(head: torch.nn.Module | None, targets: torch.Tensor, never: torch.Tensor | None,
                     logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """Training only (with gradients): per row whose target is a stop token, the cross-entropy of that token among
    itself and the look-alikes `never` (models/vocab.py: what a runtime that does not leave them out needs), 0
    elsewhere; None where there is nothing to add. `logits_of(rows, columns)` gives those rows' logits in those
    columns (a rows x columns matrix)."""
    stops = getattr(head, "stop_ids", None)
    if never is None or stops is None or not torch.is_grad_enabled():
        return None
    rows = torch.isin(targets, stops.to(targets.device)).nonzero().squeeze(1)
    if not len(rows):
        return None
    own = logits_of(rows, targets[rows]).diagonal()
    logits = torch.cat([own[:, None], logits_of(rows, never)], dim=1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    extra = torch.zeros(len(targets), dtype=logits.dtype, device=logits.device)
    return extra.index_add(0, rows, torch.logsumexp(logits, dim=1) - logits[:, 0])


def cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, rows_per_block: int,
                       grad_into: torch.Tensor | None = None, never: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each row of `logits` in fp32 (at least), the columns `never` left out of the softmax (each
    row's own target excepted: left_out); with `grad_into`, also write d loss / d logits.

    `grad_into` may be `logits` itself (its values are read block by block before being overwritten).
    """
    accumulate = torch.promote_types(logits.dtype, torch.float32)
    losses = -logits.gather(1, targets[:, None]).squeeze(1).to(accumulate)
    buffer = torch.empty((min(rows_per_block, logits.shape[0]), logits.shape[1]), dtype=accumulate,
                         device=logits.device)
    for start in range(0, logits.shape[0], rows_per_block):
        rows = slice(start, min(start + rows_per_block, logits.shape[0]))
        block = buffer[: rows.stop - start].copy_(logits[rows])
        if never is not None:
            own = targets[rows, None]
            block[:, never] = float("-inf")
            block.scatter_(1, own, logits[rows].gather(1, own).to(accumulate))  # each row's target scored (left_out)
        top = block.amax(dim=-1, keepdim=True)
        total = block.sub_(top).exp_().sum(dim=-1, keepdim=True)
        losses[rows] += total.log().add_(top).squeeze(1)
        if grad_into is not None:
            block.div_(total)[torch.arange(block.shape[0], device=block.device), targets[rows]] -= 1
            grad_into[rows] = block
    return losses


class CrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of (N, vocab) logits; keeps d loss / d logits (the size of the logits), not fp32 copies."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, never: torch.Tensor | None = None) -> torch.Tensor:
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        losses = cross_entropy_rows(logits, targets, ce_block_rows(logits), grad, never)
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_losses[:, None].to(grad.dtype), None, None


def head_cross_entropy_rows(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                           grad_into: torch.Tensor | None = None, never: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each row of `hidden @ weight.T` in one pass over the vocabulary, the columns `never` (sorted)
    left out of the softmax (each row's own target excepted: left_out); with `grad_into`, also write d loss /
    d hidden = softmax @ weight - weight[target]. Logits keep the matmul's dtype, as the model's own head would give
    them; the log-sum-exp and the softmax sums are accumulated in fp32 (at least)."""
    accumulate = torch.promote_types(hidden.dtype, torch.float32)
    n, vocab = hidden.shape[0], weight.shape[0]
    options = dict(dtype=accumulate, device=hidden.device)
    # not -inf: a first chunk whose columns are all left out would make its rescale exp(-inf - -inf) = NaN
    top = torch.full((n, 1), torch.finfo(accumulate).min, **options)
    total = torch.zeros((n, 1), **options)
    target_logit = torch.zeros(n, **options)
    weighted = torch.zeros((n, weight.shape[1]), **options) if grad_into is not None else None
    fused = kernels.usable(hidden, weight)
    if never is not None:  # chunk i's ids are never[cuts[i]:cuts[i + 1]]: found once, not a device sync per chunk
        cuts = torch.searchsorted(never, torch.arange(0, vocab + chunk, chunk, device=never.device)).tolist()
    if fused:  # one pass for max, exp, sum and the bf16 copy (kernels/fused_cpu.c): 6 passes fewer per chunk
        probs_buffer = torch.empty(n * min(chunk, vocab), dtype=weight.dtype, device=hidden.device)
        rescale = torch.empty((n, 1), **options)
    else:
        buffer = torch.empty((n, min(chunk, vocab)), **options)
    for i, start in enumerate(range(0, vocab, chunk)):
        columns = weight[start:start + chunk]
        logits = hidden @ columns.t()
        inside = (targets >= start) & (targets < start + columns.shape[0])
        local = (targets - start).clamp(0, columns.shape[0] - 1)[:, None]
        picked = logits.gather(1, local).squeeze(1)
        target_logit += torch.where(inside, picked, 0.0)
        if never is not None:
            logits[:, never[cuts[i]:cuts[i + 1]] - start] = float("-inf")
            # each row's target scored (left_out): a row whose target is elsewhere writes back what it read
            logits.scatter_(1, local, torch.where(inside, picked, logits.gather(1, local).squeeze(1))[:, None])
        if fused:  # updates top, total and rescale in place
            probs = probs_buffer[:n * columns.shape[0]].view(n, columns.shape[0])  # contiguous, also when partial
            kernels.softmax_chunk(logits, probs, top, total, rescale)
        else:
            logits = buffer[:, :columns.shape[0]].copy_(logits)
            new_top = torch.maximum(top, logits.amax(dim=1, keepdim=True))
            rescale = (top - new_top).exp_()
            probs = logits.sub_(new_top).exp_()
            total.mul_(rescale).add_(probs.sum(dim=1, keepdim=True))
            probs, top = probs.to(weight.dtype), new_top
        if weighted is not None:
            weighted.mul_(rescale).add_(probs @ columns)
    if grad_into is not None:
        grad_into.copy_(weighted.div_(total).sub_(weight[targets].to(accumulate)))
    return (top + total.log()).squeeze(1) - target_logit


class HeadCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of `hidden @ weight.T` for a frozen head; logits exist one vocabulary chunk at a time."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                never: torch.Tensor | None = None) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        losses = torch.empty(hidden.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32),
                             device=hidden.device)
        chunk = HEAD_VOCAB_CHUNK["cpu" if hidden.device.type == "cpu" else "other"]
        for start in range(0, hidden.shape[0], HEAD_ROW_BLOCK):
            rows = slice(start, min(start + HEAD_ROW_BLOCK, hidden.shape[0]))
            losses[rows] = head_cross_entropy_rows(hidden[rows], weight, targets[rows], chunk,
                                                   grad_hidden[rows] if grad_hidden is not None else None, never)
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_losses[:, None].to(grad_hidden.dtype), None, None, None


# Rows for which an fp32 head on a CPU is faster as `W @ xᵀ` than as F.linear's `x @ Wᵀ`, per CPU class, only where
# measured. Gemma's 262k x 640 fp32 head, ms per call at 1 / 2 / 4 / 8 / 16 / 32 / 64 rows, `x @ Wᵀ` vs `W @ xᵀ`:
# 46 / 96 / 115 / 120 / 148 / 236 / 478 vs 45 / 33 / 29 / 115 / 96 / 188 / 234 on a 2-core AVX2 EPYC; with AVX2
# forced on the AMX Xeon (fp32 there only when asked for), 4 rows 105 vs 139 (worse), 8 rows 135-165 vs 78-81, and
# through the engine 1.07x tokens/s at 16 rows, 0.97x at 32. Elsewhere (AVX-512 without bf16, ARM): F.linear.
WEIGHT_MAJOR_ROWS = {"native_bf16": (8, 16), "avx2": (2, 64)}


def weight_major_rows() -> tuple[int, int] | None:
    """The (fewest, most) rows this CPU's fp32 head computes weight-major, or None."""
    flags = cpu.cpu_flags()
    if cpu.cpu_has_native_bf16():
        return WEIGHT_MAJOR_ROWS["native_bf16"]
    return WEIGHT_MAJOR_ROWS["avx2"] if "avx2" in flags and "avx512f" not in flags else None


def weight_major_pays(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    if rows.device.type != "cpu" or rows.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    span = weight_major_rows()
    return span is not None and span[0] <= rows.shape[0] <= span[1]


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` as one 2-D matmul over the rows of `x`.

    Why: PyTorch (2.13, CPU) runs a bf16 linear whose input is 3-D with a batch stride that is not packed (the last
    position of each prompt, which `generate` hands the output head) and whose weight needs no gradient (every
    PEFT base) as a bmm over an expanded copy of the weight: 2.4 s per prompt for Gemma's 262k x 640 head instead
    of 0.04 s, measured on the 2-core Xeon (AMX); a batch of 4 prompts took 9.2 s. For a few fp32 rows on a CPU the
    weight-major product is faster (WEIGHT_MAJOR_ROWS); its result keeps that transposed layout (not copied).
    """
    rows = x.reshape(-1, x.shape[-1])
    if weight_major_pays(rows, weight):
        out = (weight @ rows.t()).t()
        out = out if bias is None else out + bias
    else:
        out = F.linear(rows, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def flat_head_forward(self, x: torch.Tensor) -> torch.Tensor:
    return linear_rows(x, self.weight, self.bias)


def fusable_head(model) -> torch.nn.Module | None:
    """The output head, if the loss may apply its weight itself: frozen, no bias, plain logits (no soft-capping)."""
    model = unwrapped(model)
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    plain = getattr(model.config, "final_logit_softcapping", None) is None
    if (weight is None or weight.requires_grad or getattr(head, "bias", None) is not None or not plain
            or not weight.is_floating_point() or weight.dim() != 2):
        return None
    return head


@contextmanager
def head_fused_with_loss(head: torch.nn.Module, targets: torch.Tensor):
    """While active, the head's forward computes the targets' losses from its input and projects no row itself.

    A forward pre-hook, so the work happens inside the model's own forward (where DDP/FSDP expect the weights
    to be used); the model returns empty logits and `result["losses"]` holds the per-token cross-entropy.
    """
    result: dict[str, torch.Tensor] = {}

    def hook(module, args):
        hidden = args[0].reshape(-1, args[0].shape[-1])
        never = left_out(module, targets)
        result["losses"] = HeadCrossEntropy.apply(hidden, module.weight, targets, never)
        extra = lookalike_losses(module, targets, never,
                                 lambda rows, columns: hidden[rows] @ module.weight[columns].t())
        if extra is not None:
            result["losses"] = result["losses"] + extra
        return (hidden[:0],)

    handle = head.register_forward_pre_hook(hook)
    try:
        yield result
    finally:
        handle.remove()


def forward_losses(model, inputs: dict, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of `targets` through the model's own forward: the head fused with the loss where it
    is frozen and plain, else the kept positions' logits with the lean cross-entropy above."""
    head = fusable_head(model)
    if head is None:
        head = unwrapped(model).get_output_embeddings()
        never = left_out(head, targets)
        logits = model(**inputs).logits
        losses = CrossEntropy.apply(logits, targets, never)
        extra = lookalike_losses(head, targets, never, lambda rows, columns: logits[rows][:, columns])
        return losses if extra is None else losses + extra
    with head_fused_with_loss(head, targets) as result:
        model(**inputs)
    return result["losses"]
