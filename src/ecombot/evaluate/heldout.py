"""Held-out loss: mean cross-entropy per answer token on conversations the model never trained on."""

from __future__ import annotations

import math

import numpy as np
import torch

from ecombot.data import Conversation
from ecombot.models import encode_conversations, scoring_batch, token_losses


# A token the model gives more than half the probability is its greedy choice, whatever the other tokens get.
SURE = math.log(2)


def scored_examples(convs: list[Conversation], tokenizer, system_prompt: str | None, max_length: int,
                    prefixes: list[list[dict[str, str]]] | None) -> list[dict[str, list[int]]]:
    """The conversations encoded for scoring, one example each: one longer than `max_length` loses its oldest
    prompt tokens, never the answer (a grounded prompt of long passages would otherwise leave nothing to score)."""
    encoded = encode_conversations(convs, tokenizer, system_prompt, max_length, prefixes, keep_end=True)
    if encoded.no_answer_left:
        raise ValueError(f"{encoded.no_answer_left} conversation(s) have no answer token to score")
    return encoded.examples


@torch.inference_mode()
def answer_token_stats(model, tokenizer, convs: list[Conversation], system_prompt: str | None, max_length: int = 1024,
                       batch_size: int = 16, prefixes: list[list[dict[str, str]]] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per conversation: summed cross-entropy of its answer tokens (not the prefix's), their count, and how many
    of them the model predicts with probability > 0.5 (so greedy decoding says them, given the reference so far)."""
    examples = scored_examples(convs, tokenizer, system_prompt, max_length, prefixes)
    device = next(model.parameters()).device
    sums, counts, sure = np.zeros(len(convs)), np.zeros(len(convs)), np.zeros(len(convs))
    for start in range(0, len(examples), batch_size):
        chunk = scoring_batch(model, examples[start:start + batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in chunk.items()}
        losses, rows = token_losses(model, batch)
        rows = rows.cpu().numpy() + start
        losses = losses.double().cpu().numpy()
        np.add.at(sums, rows, losses)
        np.add.at(counts, rows, 1)
        np.add.at(sure, rows, losses < SURE)
    return sums, counts, sure


def item_losses(model, tokenizer, convs: list[Conversation], system_prompt: str | None, max_length: int = 1024,
                batch_size: int = 16, prefixes: list[list[dict[str, str]]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per conversation: summed cross-entropy of its answer tokens (not the prefix's) and their count."""
    sums, counts, _ = answer_token_stats(model, tokenizer, convs, system_prompt, max_length, batch_size, prefixes)
    return sums, counts


def heldout_loss(model, tokenizer, convs: list[Conversation], system_prompt: str | None, max_length: int = 1024,
                 batch_size: int = 16, prefixes: list[list[dict[str, str]]] | None = None) -> dict[str, float]:
    """Token-weighted mean loss over the conversations' answer tokens, and its perplexity."""
    if not convs:
        raise ValueError("no conversation to score")
    sums, counts = item_losses(model, tokenizer, convs, system_prompt, max_length, batch_size, prefixes)
    loss = float(sums.sum() / counts.sum())
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": int(counts.sum())}


def engine_item_losses(engine, convs: list[Conversation], adapter: str, max_length: int = 1024,
                       prefixes: list[list[dict[str, str]]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`item_losses` through the engine that answers: the PyTorch model itself, or llama.cpp's logits over the
    GGUF files it runs (so `evaluate --engine llama.cpp` scores the deployed model, quantized base included)."""
    from ecombot.chat import TransformersEngine

    if isinstance(engine, TransformersEngine):
        with engine.using(adapter):
            return item_losses(engine.model, engine.tokenizer, convs, engine.system_prompt(adapter), max_length,
                               prefixes=prefixes)
    return engine.answer_losses(scored_examples(convs, engine.tokenizer, engine.system_prompt(adapter), max_length,
                                                prefixes), adapter)
