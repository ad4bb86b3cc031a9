"""Constrained decoding: a row of a batched generation may follow a grammar, so its answer can only be text the
grammar allows (e.g. a recommendation naming only the products it was shown, in the layout the reply is read in).

The matching is llguidance's (a grammar engine vLLM and SGLang use, llama.cpp optionally; Lark syntax): it keeps
each row's parser in step with the tokens generated and gives the tokens allowed next. What is ours: keeping a
batch's rows in step (each row may have its own grammar or none, and its own stop), for both engines — Transformers
through a `LogitsProcessor`, llama.cpp's own sampling loop through `RowGrammars.allowed` directly.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from transformers import LogitsProcessor

from ecombot.errors import EcombotError


class GrammarError(EcombotError):
    """A grammar llguidance cannot compile."""


class GrammarTokenizer:
    """The model's vocabulary as llguidance reads it, built on first use and kept: building it walks every token
    (about 10 s for Gemma's 262k), which an engine pays once, not per request."""

    def __init__(self, hf_tokenizer, vocab_size: int, stop_ids: list[int]):
        self.hf_tokenizer, self.vocab_size, self.stop_ids = hf_tokenizer, vocab_size, list(stop_ids)
        self._built = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._built is None:
                import llguidance.hf

                self._built = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=self.vocab_size,
                                                           eos_token=self.stop_ids)
            return self._built


class RowGrammars:
    """One llguidance matcher per row (None: that row is free), fed each row's new tokens as they come."""

    def __init__(self, tokenizer: GrammarTokenizer, grammars: list[str | None]):
        import llguidance

        self.vocab_size, self.stop_ids = tokenizer.vocab_size, set(tokenizer.stop_ids)
        built = tokenizer.get()
        self.matchers = [None if g is None else llguidance.LLMatcher(built, llguidance.LLMatcher.grammar_from_lark(g),
                                                                     log_level=0) for g in grammars]
        for row, matcher in enumerate(self.matchers):
            if matcher is not None and matcher.is_error():
                raise GrammarError(f"grammar of row {row} does not compile: {matcher.get_error()}")
        self.fed = [0] * len(grammars)  # answer tokens each matcher has consumed
        self.done = [m is None for m in self.matchers]

    def allowed(self, row: int, answer: list[int]) -> np.ndarray | None:
        """The tokens `row` may produce next after `answer` (its tokens so far), as a boolean array over the
        vocabulary; None where the row is free or already finished (a stop token, or padding after it)."""
        if self.done[row]:
            return None
        matcher = self.matchers[row]
        for token in answer[self.fed[row]:]:
            self.fed[row] += 1
            # A stop token ends the row; so does one the grammar refuses, which the mask below never lets the row
            # produce itself: it is the padding `generate` puts after a row stopped by its own budget or cancelled.
            if token in self.stop_ids or not matcher.consume_token(token):
                self.done[row] = True
                return None
        if matcher.is_stopped():  # the grammar is complete: only a stop token may follow
            mask = np.zeros(self.vocab_size, dtype=bool)
            mask[list(self.stop_ids)] = True
            return mask
        return np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8)[:self.vocab_size] > 0


class GrammarLogits(LogitsProcessor):
    """`RowGrammars` for Transformers' `generate`: every disallowed token of a constrained row scores -inf."""

    def __init__(self, rows: RowGrammars, prompt_length: int):
        self.rows, self.prompt_length = rows, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masks = {row: mask for row, answer in enumerate(input_ids[:, self.prompt_length:].tolist())
                 if (mask := self.rows.allowed(row, answer)) is not None}
        if not masks:
            return scores
        rows = list(masks)
        allowed = torch.zeros(len(rows), scores.shape[1], dtype=torch.bool)
        allowed[:, :self.rows.vocab_size] = torch.from_numpy(np.stack([masks[r] for r in rows]))
        scores[rows] = scores[rows].masked_fill(~allowed.to(scores.device), float("-inf"))
        return scores
