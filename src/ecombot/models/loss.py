"""What the model is scored on: the cross-entropy of answer tokens only, the same in training and evaluation.

Why by hand: Gemma's 262k-token vocabulary makes the output head the largest cost of a step, and the prompt tokens
(system prompt, customer question) need no logits at all. Passing a boolean `logits_to_keep` mask through the
model's own forward (Transformers >= 5) projects only the supervised positions, so the loss equals the full-logits
loss at a fraction of the cost, and the call still goes through the (DDP/FSDP-wrapped) model's forward.

A packed row (models.PackedCollator) carries `position_ids` that restart at each conversation and no attention mask:
Transformers then attends within each conversation by itself. Models given `speedups.apply` compute the same
losses with faster kernels (per-conversation attention, the head fused into the loss). Answer-only backward
(`answer_only_losses`, a training choice) always runs speedups.attention's kernels, which it needs.
"""

from __future__ import annotations

import torch

from ecombot import speedups
from ecombot.models.encoding import PackedCollator, PadCollator
from ecombot.speedups.attention import unwrapped


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Mask of the positions whose next token is supervised (where the model must predict an answer token)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def token_losses(model, batch: dict[str, torch.Tensor],
                 answer_only_backward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every supervised token, and the conversation it belongs to (its batch row, or for a packed
    row its place in the row).

    `batch`: input_ids and labels, plus attention_mask (padded rows) or position_ids and cu_seq_lens (a packed row,
    see models.PackedCollator). `answer_only_backward` (packed rows, with gradients): the same losses, with
    gradients through the answer tokens only (answer_only_losses)."""
    input_ids, labels, cu_seq_lens = batch["input_ids"], batch["labels"], batch.get("cu_seq_lens")
    keep = supervised_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    where = keep.nonzero()
    if answer_only_backward and cu_seq_lens is not None and torch.is_grad_enabled() and len(targets):
        losses = answer_only_losses(model, batch, keep, targets)
    else:
        inputs = dict(input_ids=input_ids, logits_to_keep=keep, use_cache=False)
        if cu_seq_lens is None:
            inputs["attention_mask"] = batch["attention_mask"]
        else:
            inputs["position_ids"] = batch["position_ids"]
        losses = speedups.forward_losses(model, inputs, targets, cu_seq_lens)
        if losses is None:  # no speed-ups on this model: its own forward and PyTorch's cross-entropy
            losses = logits_cross_entropy(model, model(**inputs).logits, targets)
    if cu_seq_lens is None:
        return losses, where[:, 0]
    return losses, torch.searchsorted(cu_seq_lens, where[:, 1], right=True) - 1


def logits_cross_entropy(model, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PyTorch's cross-entropy, the tokens no answer may contain (models/vocab.py) left out and, in training, the stop
    token ranked against them, as the speed-ups do."""
    head = unwrapped(model).get_output_embeddings()
    never = speedups.head.left_out(head, targets)
    own = targets[:, None]  # each row's target scored, as the speed-ups score it (speedups.head.left_out)
    masked = logits if never is None else logits.index_fill(-1, never, float("-inf")).scatter(
        -1, own, logits.gather(-1, own))
    losses = torch.nn.functional.cross_entropy(masked.to(torch.promote_types(logits.dtype, torch.float32)), targets,
                                               reduction="none")
    extra = speedups.head.lookalike_losses(head, targets, never, lambda rows, columns: logits[rows][:, columns])
    return losses if extra is None else losses + extra


def answer_only_losses(model, batch: dict[str, torch.Tensor], keep: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
    """The losses of a packed row, with backward through the answer tokens only.

    Why: in a grounded row ~86% of the tokens are prompt (knowledge passages, question), which needs no logits but
    costs the full backward pass through every layer. Here the whole row runs once without autograd, keeping each
    layer's keys and values, then the answer tokens alone (the positions whose next token is scored) run again with
    autograd, attending to those recorded keys and values. The losses equal the one-pass losses (same forward
    values, at dropout 0: the default; with LoRA dropout the two passes draw their own masks); the gradients leave
    out how the adapter changes the prompt tokens' keys and values (the adapter still learns how answers read them).
    A training choice, not a speed-up of the same computation: the config's `prompt_gradients: false`."""
    from ecombot.speedups.attention import AnswerLayout, attention_for

    input_ids, positions, cu_seq_lens = batch["input_ids"], batch["position_ids"], batch["cu_seq_lens"]
    selected = keep[0].nonzero().squeeze(1)
    layout = AnswerLayout.from_selection(cu_seq_lens, selected)
    with torch.no_grad(), attention_for(model, input_ids, layout=layout.row, record=layout.recorded):
        model(input_ids=input_ids, position_ids=positions, logits_to_keep=torch.zeros_like(keep), use_cache=False)
    answers = dict(input_ids=input_ids[:, selected], position_ids=positions[:, selected],
                   logits_to_keep=torch.ones((1, len(selected)), dtype=torch.bool, device=keep.device),
                   use_cache=False)
    with attention_for(model, answers["input_ids"], layout=layout):
        if speedups.is_applied(model):
            return speedups.head.forward_losses(model, answers, targets)  # the head fused into the loss
        return logits_cross_entropy(model, model(**answers).logits, targets)


def scoring_batch(model, examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch to score `examples` in, in order: one packed row where the per-conversation attention kernel runs
    (no pad token is computed: a padded batch of grounded prompts, 300-500 tokens each, was a fifth padding), else a
    padded batch (Transformers' own packed-row mask would span the whole row: ~batch-size times the attention)."""
    if speedups.is_applied(model):
        return PackedCollator(pad_token_id, sum(len(ex["input_ids"]) for ex in examples))([{"examples": examples}])
    return PadCollator(pad_token_id)(examples)


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens of the batch's conversations (padding not counted)."""
    if "cu_seq_lens" in batch:
        return int(batch["cu_seq_lens"][-1])
    return int(batch["attention_mask"].sum())


def supervised_loss(model, batch: dict[str, torch.Tensor], num_items: int | torch.Tensor | None = None,
                    answer_only_backward: bool = False) -> torch.Tensor:
    """Sum of token cross-entropies over supervised tokens / num_items (default: their count here)."""
    losses, _ = token_losses(model, batch, answer_only_backward)
    total = losses.sum()
    denominator = losses.numel() if num_items is None else num_items
    if isinstance(denominator, torch.Tensor):
        return total / denominator.to(total.device).clamp(min=1)
    return total / max(denominator, 1)
