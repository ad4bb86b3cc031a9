"""One small generation engine (load, batch generate, stream, switch to the base model) used by chat and quickstart.

Prompts go through the same chat template as training; generation stops at <end_of_turn>/EOS.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ecombot.models import LoadedModel, encode_prompt, stop_token_ids, with_system


class AnswerRepetitionPenalty(LogitsProcessor):
    """Repetition penalty on the tokens of the answer only.

    Why by hand: Transformers' `repetition_penalty` also penalises every prompt token, which pushes a
    support answer away from the customer's own words and the store's terms (on the quickstart adapter
    it turned most answers to the wrong policy); loops inside the answer are what we want to damp.
    """

    def __init__(self, penalty: float, prompt_length: int):
        self.penalty, self.prompt_length = penalty, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.prompt_length:]
        if answer.shape[1] == 0 or self.penalty == 1.0:
            return scores
        seen = torch.gather(scores, 1, answer)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, answer, seen)


@dataclass
class Decoding:
    """Defaults for support answers: greedy (deterministic) with a mild penalty on loops within the answer."""

    max_new_tokens: int = 200
    temperature: float = 0.0
    repetition_penalty: float = 1.1

    def generate_kwargs(self, prompt_length: int) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens,
                  "logits_processor": LogitsProcessorList([AnswerRepetitionPenalty(self.repetition_penalty, prompt_length)])}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=0.9)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Generation:
    text: str
    new_tokens: int  # generated tokens, including the stop token when the model stopped by itself


class Engine:
    def __init__(self, loaded: LoadedModel, system_prompt: str | None, decoding: Decoding | None = None,
                 context_tokens: int = 2048):
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.loaded = loaded
        self.system_prompt = system_prompt
        self.decoding = decoding or Decoding()
        limit = getattr(self.model.config, "max_position_embeddings", context_tokens) or context_tokens
        self.context_tokens = min(context_tokens, limit)
        self.stop_ids = stop_token_ids(self.tokenizer)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt for the next answer, dropping the oldest exchanges until it fits the context window."""
        messages = list(messages)
        while True:
            ids = encode_prompt(self.tokenizer, with_system(messages, self.system_prompt))
            if len(ids) + self.decoding.max_new_tokens <= self.context_tokens or len(messages) <= 1:
                return ids[-(self.context_tokens - self.decoding.max_new_tokens):]
            messages = messages[2:]  # oldest user + assistant pair

    @contextlib.contextmanager
    def base_model(self, use_base: bool = True):
        """Answer with the adapter switched off (the base model), without reloading anything."""
        if use_base and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield
        else:
            yield

    def _generate_args(self, prompt_length: int) -> dict:
        return {**self.decoding.generate_kwargs(prompt_length), "eos_token_id": self.stop_ids,
                "pad_token_id": self.tokenizer.pad_token_id}

    @torch.inference_mode()
    def generate_detailed(self, conversations: list[list[dict[str, str]]], use_base: bool = False) -> list[Generation]:
        """Answers for many conversations at once: left-padded batch, one generate call, KV cache."""
        prompts = [self.prompt_ids(c) for c in conversations]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.loaded.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.loaded.device)
        with self.base_model(use_base):
            out = self.model.generate(input_ids=ids, attention_mask=mask, **self._generate_args(width))
        results = []
        for row in out[:, width:].tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in self.stop_ids), len(row))
            results.append(Generation(self.tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n))
        return results

    def generate(self, conversations: list[list[dict[str, str]]], use_base: bool = False) -> list[str]:
        return [g.text for g in self.generate_detailed(conversations, use_base)]

    def stream(self, messages: list[dict[str, str]], use_base: bool = False) -> Iterator[str]:
        """Yield the answer's text piece by piece as tokens are generated."""
        from transformers import TextIteratorStreamer

        ids = torch.tensor([self.prompt_ids(messages)], device=self.loaded.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode(), self.base_model(use_base):
                    self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                        **self._generate_args(ids.shape[1]))
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]
