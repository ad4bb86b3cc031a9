"""The generation engine behind chat, evaluate and serve: load once, generate batches, stream, switch adapters.

`GenerationEngine` is the whole interface the three stages use; `TransformersEngine` implements it with
Transformers + PEFT, `chat.llama_cpp_engine.LlamaCppEngine` with llama.cpp over GGUF files, and `chat.factory` builds
either. Both share `PromptingEngine`: prompts through the same chat template as training (tokenized by the model's own
tokenizer), each adapter's system prompt and version; generation stops at <end_of_turn>/EOS.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ecombot import speedups
from ecombot.chat.grammar import GrammarLogits, GrammarTokenizer, RowGrammars
from ecombot.errors import EcombotError, ModelError
from ecombot.models import (CHAT_ANSWER_TOKENS, LoadedModel, adapter_display_name, answer_token_limit, encode_prompt,
                            never_output, peft_adapter_name, stop_token_ids, with_system)
from ecombot.run_dir import RunDir

BASE = "base"  # adapter name meaning "the base model, adapters switched off"

# on_text(row, new_text) -> False cancels that row (e.g. the HTTP client went away)
TextCallback = Callable[[int, str], "bool | None"]


class PromptTooLong(EcombotError):
    """The newest message alone does not fit the context window next to the answer's token budget."""


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


class NeverOutput(LogitsProcessor):
    """Leaves out the tokens no answer may contain: the head's look-alikes of the end-of-turn token (models/vocab.py),
    which a fine-tuned model raises with it and which stop nothing. A row that would have no token left (a grammar
    that allows only such tokens, e.g. byte tokens for a rare character) keeps its scores."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        left = scores.index_fill(1, self.ids, float("-inf"))
        return torch.where(torch.isneginf(left).all(dim=1, keepdim=True), scores, left)


@dataclass
class Decoding:
    """Defaults for support answers: greedy (deterministic) with a mild penalty on loops within the answer."""

    max_new_tokens: int = CHAT_ANSWER_TOKENS
    temperature: float = 0.0
    repetition_penalty: float = 1.1
    top_p: float = 0.9

    def generate_kwargs(self, prompt_length: int) -> dict:
        kwargs = {"logits_processor": LogitsProcessorList([AnswerRepetitionPenalty(self.repetition_penalty, prompt_length)])}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


def adapters_answer_limit(runs: list[Path], version: str | None = None) -> int:
    """chat's and serve's answer budget: room for the longest answer any of these adapters trained on, their live
    versions' included (a `learn` version trains on feedback too); `version`: that version's instead of the live
    one (serve sizes each adapter by the version it is answering with)."""
    versions = [v for run in map(RunDir, runs) for v in (
        [run, run.version(version or run.live_version())] if version or run.versions_file.is_file() else [run])]
    return answer_token_limit(max(filter(None, (v.longest_answer() for v in versions)), default=None),
                              CHAT_ANSWER_TOKENS)


@dataclass
class Generation:
    text: str
    new_tokens: int  # generated tokens, including the stop token when the model stopped by itself
    prompt_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (end of turn), "length" (token budget) or "cancelled"
    version: str | None = None  # the adapter version that generated it (None: the base model)


class GenerationEngine(Protocol):
    """What chat, evaluate and serve need from a model backend."""

    context_tokens: int
    decoding: Decoding

    def adapters(self) -> list[str]: ...

    def prompt_ids(self, messages: list[dict[str, str]], adapter: str | None = None,
                   reserve: int | None = None) -> list[int]: ...

    def generate(self, conversations: list[list[dict[str, str]]], adapter: str | None = None,
                 decoding: Decoding | None = None, max_new_tokens: list[int] | None = None,
                 on_text: TextCallback | None = None, prompts: list[list[int]] | None = None,
                 grammars: list[str | None] | None = None) -> list[Generation]: ...

    def version(self, adapter: str | None = None) -> str | None: ...

    def reload_promoted(self) -> dict[str, str]: ...


class RowTracker(BaseStreamer, StoppingCriteria):
    """Follows each row of one batched `generate`: streams its new text, stops it at its own budget or on cancel.

    Why by hand: Transformers' text streamers handle a batch of one; a server batching requests needs every
    row's text as it is produced, and rows with different `max_tokens`.
    """

    def __init__(self, tokenizer, stop_ids: list[int], prompt_width: int, limits: list[int],
                 on_text: TextCallback | None):
        self.tokenizer, self.stop_ids, self.prompt_width = tokenizer, set(stop_ids), prompt_width
        self.limits, self.on_text = limits, on_text
        self.tokens: list[list[int]] = [[] for _ in limits]
        self.sent = [""] * len(limits)
        self.finish: list[str | None] = [None] * len(limits)
        self.seen_prompt = False

    def put(self, value: torch.Tensor | list[int]) -> None:
        """One new token per row (rows already finished are skipped)."""
        if not self.seen_prompt:  # generate() first hands over the prompt
            self.seen_prompt = True
            return
        for row, token in enumerate(value.view(-1).tolist() if isinstance(value, torch.Tensor) else value):
            if self.finish[row] is not None:
                continue
            if token in self.stop_ids:
                self.finish[row] = "stop"
            else:
                self.tokens[row].append(token)
                if len(self.tokens[row]) >= self.limits[row]:
                    self.finish[row] = "length"
            self._send(row)

    def end(self) -> None:
        for row in range(len(self.limits)):
            if self.finish[row] is None:
                self.finish[row] = "length"
                self._send(row)

    def text(self, row: int) -> str:
        return self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).strip()

    def _send(self, row: int) -> None:
        if self.on_text is None:
            return
        text = self.text(row)
        if self.finish[row] is None:  # hold back trailing spaces and half-decoded characters until stable
            text = text.rstrip().rstrip("\ufffd")
        if not text.startswith(self.sent[row]) or len(text) == len(self.sent[row]):
            if self.finish[row] is None and self.on_text(row, "") is False:
                self.finish[row] = "cancelled"
            return
        delta, self.sent[row] = text[len(self.sent[row]):], text
        if self.on_text(row, delta) is False and self.finish[row] is None:
            self.finish[row] = "cancelled"

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        steps = input_ids.shape[1] - self.prompt_width
        done = [self.finish[r] == "cancelled" or steps >= limit for r, limit in enumerate(self.limits)]
        return torch.tensor(done, device=input_ids.device)


class PromptingEngine:
    """What every engine shares: the prompt (training template, the adapter's system prompt, oldest turns dropped to
    fit), the adapters' sources and live versions, streaming, and one lock around generation and reloads."""

    def __init__(self, tokenizer, system_prompt: str | None, decoding: Decoding | None, context_tokens: int):
        """`system_prompt` is what the base model is told; each adapter is told the prompt its run was trained
        with (a conversation in another format than training is out of distribution for a small model)."""
        self.tokenizer = tokenizer
        self.decoding = decoding or Decoding()
        self.context_tokens = context_tokens
        self.stop_ids = stop_token_ids(tokenizer)
        self.default_adapter = BASE
        self.system_prompts: dict[str, str | None] = {BASE: system_prompt}
        # where each adapter came from and which of its versions answers (ecombot learn promotes new ones)
        self.sources: dict[str, Path] = {}
        self.versions: dict[str, str] = {}
        # one generate at a time, and never during a reload: a batch in flight finishes on the weights it began with
        self.lock = threading.RLock()
        self.grammar_tokenizer: GrammarTokenizer | None = None  # set by each runtime, which knows its vocabulary

    def adapters(self) -> list[str]:
        raise NotImplementedError

    def row_grammars(self, grammars: list[str | None] | None) -> RowGrammars | None:
        """The matchers of a batch whose rows follow `grammars` (a Lark grammar or None per row); None: all free."""
        if not grammars or not any(grammars):
            return None
        return RowGrammars(self.grammar_tokenizer, grammars)

    def _register(self, name: str, run: Path | None, version: str | None) -> None:
        """Note an adapter loaded from `run` at `version` (run None: adapter files outside a run)."""
        self.system_prompts[name] = RunDir(run).system_prompt() if run else self.system_prompts[BASE]
        if run is not None:
            self.sources[name], self.versions[name] = Path(run), version

    def version(self, adapter: str | None = None) -> str | None:
        """The version of `adapter` answering now (None: the base model, or an adapter loaded without a run)."""
        return self.versions.get(adapter or self.default_adapter)

    def promoted(self) -> dict[str, tuple[str, RunDir]]:
        """{adapter: (version, its folder)} for each adapter whose run promoted (or rolled back to) another version
        since it was loaded."""
        changed = {}
        for name, root in self.sources.items():
            version = RunDir(root).live_version()
            if version != self.versions[name]:
                changed[name] = version, RunDir(root).version(version)
                changed[name][1].check_adapter()
        return changed

    def override_system_prompt(self, system_prompt: str | None) -> None:
        """Tell the base model and every adapter `system_prompt` (a user's explicit choice over the runs')."""
        self.system_prompts = dict.fromkeys(self.system_prompts, system_prompt)

    def system_prompt(self, adapter: str | None = None) -> str | None:
        return self.system_prompts.get(adapter or self.default_adapter, self.system_prompts[BASE])

    def adapter_name(self, adapter: str | None) -> str:
        """`adapter`, or the default one; an unknown name is refused."""
        adapter = adapter or self.default_adapter
        if adapter != BASE and adapter not in self.adapters():
            raise ModelError(f"unknown adapter {adapter!r}; loaded: {', '.join([BASE, *self.adapters()])}")
        return adapter

    def prompt_ids(self, messages: list[dict[str, str]], adapter: str | None = None,
                   reserve: int | None = None) -> list[int]:
        """The prompt for the next answer, dropping the oldest exchanges until it fits the context window."""
        reserve = self.decoding.max_new_tokens if reserve is None else reserve
        system_prompt = self.system_prompt(adapter)
        messages = list(messages)
        while True:
            ids = encode_prompt(self.tokenizer, with_system(messages, system_prompt))
            if len(ids) + reserve <= self.context_tokens:
                return ids
            if len(messages) <= 1:
                raise PromptTooLong(f"the message is {len(ids)} tokens long with the system prompt; with "
                                    f"{reserve} tokens for the answer the limit is {self.context_tokens - reserve}")
            messages = messages[2:]  # oldest user + assistant pair

    def generate(self, conversations: list[list[dict[str, str]]], adapter: str | None = None,
                 decoding: Decoding | None = None, max_new_tokens: list[int] | None = None,
                 on_text: TextCallback | None = None, prompts: list[list[int]] | None = None,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        raise NotImplementedError


class TransformersEngine(PromptingEngine):
    """Transformers + PEFT engine: one base model in memory, any number of LoRA adapters switched per call."""

    def __init__(self, loaded: LoadedModel, system_prompt: str | None, decoding: Decoding | None = None,
                 context_tokens: int = 2048):
        limit = getattr(loaded.model.config, "max_position_embeddings", context_tokens) or context_tokens
        super().__init__(loaded.tokenizer, system_prompt, decoding, min(context_tokens, limit))
        self.model, self.loaded = loaded.model, loaded
        self.grammar_tokenizer = GrammarTokenizer(self.tokenizer, self.model.config.get_text_config().vocab_size,
                                                  self.stop_ids)
        active = getattr(self.model, "active_adapter", None)
        self.default_adapter = adapter_display_name(active) if active else BASE
        if self.default_adapter != BASE:
            self._register(self.default_adapter, loaded.adapter_dir, loaded.adapter_version)
        self.low_bit_layers = 0  # Linear layers answering one-token steps with low-bit weights (speed_up_decoding)
        self.never_output = never_output(self.model)

    def adapters(self) -> list[str]:
        return [adapter_display_name(name) for name in getattr(self.model, "peft_config", {})]

    def speed_up_decoding(self, bits: int = 8) -> None:
        """On CPUs, answer one-token steps with int8/int4 weights (speedups/lowbit.py): for bf16 weights, and for fp32
        ones where the CPU has AVX-512.

        Call it once every adapter is loaded; batched calls and training-style losses are unchanged.
        """
        if bits not in (4, 8, 16):
            raise EcombotError(f"decode bits must be 4, 8 or 16, got {bits}")
        applied = speedups.apply(self.model, mode="decode", low_bit=bits if bits in (4, 8) else None)
        self.low_bit_layers = applied.changed.get("low_bit", 0)

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load another adapter of the same base model next to the ones already loaded (no base reload)."""
        if self.low_bit_layers:
            raise ModelError("load every adapter before speed_up_decoding()")
        if not hasattr(self.model, "load_adapter") or not self.adapters():
            raise ModelError("extra adapters need the engine to be loaded with a first adapter")
        version = RunDir(path).live_version()
        try:
            self.model.load_adapter(str(RunDir(path).version(version).path),
                                    adapter_name=peft_adapter_name(name))
        except Exception as exc:
            raise ModelError(f"{path}: the adapter does not fit the loaded base model ({type(exc).__name__}: {exc})") from None
        self.model.eval()
        self._register(name, Path(path), version)

    def reload_promoted(self) -> dict[str, str]:
        """Swap in the weights of every adapter whose run promoted (or rolled back to) another version since it was
        loaded; returns {adapter: new version}. The new weights are copied into the loaded adapter's tensors under
        the engine lock, so a batch being generated finishes on the old version and the next one uses the new;
        no base reload, and the low-bit decoding layers (which wrap the base weights only) stay."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        changed = {}
        for name, (version, live) in self.promoted().items():
            weights = load_file(str(live.path / "adapter_model.safetensors"))
            with self.lock:
                result = set_peft_model_state_dict(self.model, weights, adapter_name=peft_adapter_name(name))
                if getattr(result, "unexpected_keys", None):
                    raise ModelError(f"{live.path}: the adapter does not match the loaded one "
                                     f"({len(result.unexpected_keys)} unexpected tensors)")
                self.versions[name] = changed[name] = version
        return changed

    @contextlib.contextmanager
    def using(self, adapter: str | None = None):
        """Answer with `adapter` (None: the default one, BASE: adapters off), without reloading anything."""
        adapter = self.adapter_name(adapter)
        if adapter == BASE:
            with self.model.disable_adapter() if self.adapters() else contextlib.nullcontext():
                yield
            return
        self.model.set_adapter(peft_adapter_name(adapter))
        yield

    @torch.inference_mode()
    def generate(self, conversations: list[list[dict[str, str]]], adapter: str | None = None,
                 decoding: Decoding | None = None, max_new_tokens: list[int] | None = None,
                 on_text: TextCallback | None = None, prompts: list[list[int]] | None = None,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        """Answers for many conversations at once: left-padded batch, one generate call, KV cache.

        Each row may have its own token budget; `on_text(row, delta)` receives every row's text as it grows.
        `prompts`: the conversations as `prompt_ids` already returned them (the server tokenizes each request
        once, to refuse one too long before it queues); None tokenizes them here. `grammars`: a Lark grammar per
        row that its answer must follow (chat/grammar.py), None for a free row.
        """
        decoding = decoding or self.decoding
        limits = max_new_tokens or [decoding.max_new_tokens] * len(conversations)
        if prompts is None:
            prompts = [self.prompt_ids(c, adapter, limit) for c, limit in zip(conversations, limits)]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.loaded.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.loaded.device)
        tracker = RowTracker(self.tokenizer, self.stop_ids, width, limits, on_text)
        kwargs = decoding.generate_kwargs(width)
        if rows := self.row_grammars(grammars):
            kwargs["logits_processor"].append(GrammarLogits(rows, width))
        if self.never_output is not None:  # after the grammar, which it never leaves without a token
            kwargs["logits_processor"].append(NeverOutput(self.never_output.to(self.loaded.device)))
        with self.lock, self.using(adapter):
            version = self.version(adapter)
            self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(limits), streamer=tracker,
                                stopping_criteria=StoppingCriteriaList([tracker]), eos_token_id=self.stop_ids,
                                pad_token_id=pad, **kwargs)
        return [Generation(tracker.text(r), len(tracker.tokens[r]) + (tracker.finish[r] == "stop"), len(prompts[r]),
                           tracker.finish[r] or "length", version) for r in range(len(prompts))]
