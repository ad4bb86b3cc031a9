"""The llama.cpp engine: a GGUF base model with LoRA GGUF adapters, several conversations decoded together.

It answers exactly the prompts the PyTorch engine answers (same template, same tokenizer, same stops, the same
repetition penalty on the answer's tokens), from the GGUF a user deploys: for the embedded default model the Q4_K_M
file ecombot trained against, plus each adapter converted once by llama.cpp's own converter.

Why the decoding loop is ours: llama-cpp-python's `Llama` generates one sequence at a time, and `serve` batches
requests. llama.cpp itself decodes many sequences in one call (its server's "slots"); this loop drives that C API
through llama-cpp-python's bindings: every prompt prefilled in one batch, then one token per live row per step, each
row with its own budget, cancellation and streamed text (`RowTracker`, shared with the PyTorch engine).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from ecombot.chat.engine import BASE, Decoding, Generation, PromptingEngine, RowTracker, TextCallback
from ecombot.chat.grammar import GrammarTokenizer, RowGrammars
from ecombot.errors import EcombotError, ModelError
from ecombot.models import answer_cross_entropy, llama_cpp, never_output_in
from ecombot.run_dir import RunDir

LOSS_CHUNK = 128  # tokens per decode when scoring: llama.cpp keeps a vocabulary-wide logits row per scored token


class LlamaCppEngine(PromptingEngine):
    """llama.cpp engine: one GGUF base in memory, any number of LoRA GGUF adapters switched per call."""

    def __init__(self, model_dir: Path, tokenizer, gguf: Path, system_prompt: str | None,
                 decoding: Decoding | None = None, context_tokens: int = 2048, max_batch: int = 8,
                 threads: int | None = None, seed: int = 0):
        """`model_dir`: the Transformers model whose tokenizer (and template) prompts are built with, and that
        adapters are converted against; `gguf`: the same model as llama.cpp runs it."""
        self.lib = llama_cpp.bindings()
        super().__init__(tokenizer, system_prompt, decoding, context_tokens)
        self.model_dir, self.gguf, self.max_batch = model_dir, gguf, max_batch
        self.lib.llama_backend_init()
        with llama_cpp.quiet_stderr():
            self.model = self.lib.llama_model_load_from_file(str(gguf).encode(), llama_cpp.model_params())
        if not self.model:
            raise ModelError(f"{gguf}: llama.cpp cannot load this GGUF file")
        self.context_tokens = min(context_tokens, self.lib.llama_model_n_ctx_train(self.model))
        params = self.lib.llama_context_default_params()
        # every row may hold a whole context: one KV pool shared by the rows of a batch
        params.n_ctx = self.context_tokens * max_batch
        params.n_seq_max, params.kv_unified = max_batch, True
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = threads or os.cpu_count() or 1
        params.no_perf = True
        # as llama-cpp-python's `Llama` (the export parity was measured with it): llama.cpp's "auto" turns flash
        # attention on, whose other rounding flipped near-tied greedy tokens of a barely trained adapter (1 of 6 answers)
        params.flash_attn_type = self.lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with llama_cpp.quiet_stderr():
            self.ctx = self.lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise ModelError(f"{gguf}: llama.cpp could not make a context of {params.n_ctx} tokens")
        self.memory = self.lib.llama_get_memory(self.ctx)
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(self.model))
        self.grammar_tokenizer = GrammarTokenizer(tokenizer, self.n_vocab, self.stop_ids)
        self.batch = self.lib.llama_batch_init(params.n_batch, 0, 1)
        self.loras: dict[str, object] = {}
        self.active: str | None = None  # the adapter set on the context
        self.rng = np.random.default_rng(seed)
        self.never_output = never_output_in(model_dir, self.stop_ids).numpy()  # as the PyTorch engine's NeverOutput

    def close(self) -> None:
        """Free llama.cpp's memory now (else at exit); the model frees its adapters."""
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = self.model = None
            self.loras = {}

    def adapters(self) -> list[str]:
        return list(self.loras)

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load a run's live adapter (converted to a LoRA GGUF once) next to the ones already loaded."""
        run = RunDir(path)
        run.check_adapter()
        version = run.live_version()
        self.loras[name] = self._load_lora(run, run.version(version))
        if self.default_adapter == BASE:
            self.default_adapter = name
        self._register(name, Path(path), version)

    def _load_lora(self, run: RunDir, folder: RunDir):
        if run.method() != "lora":
            raise ModelError(f"{run.path}: a {run.method()} adapter; llama.cpp applies plain LoRA only. Export the "
                             "run merged (`ecombot export RUN --format gguf`) and run that file as --model.")
        gguf = llama_cpp.adapter_gguf(folder.path, self.model_dir)
        with llama_cpp.quiet_stderr():
            lora = self.lib.llama_adapter_lora_init(self.model, str(gguf).encode())
        if not lora:
            raise ModelError(f"{run.path}: llama.cpp cannot apply its adapter ({gguf}) to {self.gguf.name}")
        return lora

    def reload_promoted(self) -> dict[str, str]:
        """Load the adapter of every run that promoted (or rolled back to) another version, and swap it in under the
        engine lock: a batch in flight finishes on the version it began with."""
        changed = {}
        for name, (version, live) in self.promoted().items():
            lora = self._load_lora(RunDir(self.sources[name]), live)
            with self.lock:
                old, self.loras[name] = self.loras[name], lora
                self._set_adapter(None)
                self.lib.llama_adapter_lora_free(old)
                self.versions[name] = changed[name] = version
        return changed

    def _set_adapter(self, adapter: str | None) -> None:
        if adapter == self.active:
            return
        if adapter in (None, BASE):
            status = self.lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            handles = (self.lib.llama_adapter_lora_p_ctypes * 1)(self.loras[adapter])
            status = self.lib.llama_set_adapters_lora(self.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
        if status != 0:
            raise ModelError(f"llama.cpp could not switch to adapter {adapter!r} (status {status})")
        self.active = adapter

    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (row, position, token, wants logits) entries."""
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, (row, position, token, logits) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
            batch.seq_id[i][0] = row
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise EcombotError(f"llama.cpp could not decode a batch of {len(tokens)} tokens (status {status})")

    def _logits(self, index: int) -> np.ndarray:
        """A copy of the logits after the `index`-th entry of the last batch (one that asked for them)."""
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def generate(self, conversations: list[list[dict[str, str]]], adapter: str | None = None,
                 decoding: Decoding | None = None, max_new_tokens: list[int] | None = None,
                 on_text: TextCallback | None = None, prompts: list[list[int]] | None = None,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        """Answers for many conversations at once, `max_batch` sequences per llama.cpp context; as
        `TransformersEngine.generate` (per-row budgets, streamed text, cancellation)."""
        decoding = decoding or self.decoding
        limits = max_new_tokens or [decoding.max_new_tokens] * len(conversations)
        if prompts is None:
            prompts = [self.prompt_ids(c, adapter, limit) for c, limit in zip(conversations, limits)]
        adapter = self.adapter_name(adapter)
        answers: list[Generation] = []
        for start in range(0, len(prompts), self.max_batch):
            rows = slice(start, start + self.max_batch)
            shifted = None if on_text is None else (lambda row, text, start=start: on_text(start + row, text))
            answers += self._generate_batch(prompts[rows], limits[rows], adapter, decoding, shifted,
                                            self.row_grammars(grammars and grammars[rows]))
        return answers

    def _generate_batch(self, prompts: list[list[int]], limits: list[int], adapter: str, decoding: Decoding,
                        on_text: TextCallback | None, grammars: RowGrammars | None) -> list[Generation]:
        tracker = RowTracker(self.tokenizer, self.stop_ids, 0, limits, on_text)
        tracker.seen_prompt = True
        with self.lock:
            version = self.version(adapter)
            self._set_adapter(adapter)
            self.lib.llama_memory_clear(self.memory, True)
            try:
                logits = self._prefill(prompts)
                positions = [len(p) for p in prompts]
                while True:
                    step = [self._pick(logits.get(row), tracker.tokens[row], decoding,
                                       grammars.allowed(row, tracker.tokens[row]) if grammars and row in logits
                                       else None)
                            for row in range(len(prompts))]
                    tracker.put(step)
                    live = [row for row in range(len(prompts)) if tracker.finish[row] is None]
                    if not live:
                        break
                    self._decode([(row, positions[row], step[row], True) for row in live])
                    logits = {row: self._logits(i) for i, row in enumerate(live)}
                    for row in live:
                        positions[row] += 1
            finally:
                self.lib.llama_memory_clear(self.memory, True)
        tracker.end()
        return [Generation(tracker.text(r), len(tracker.tokens[r]) + (tracker.finish[r] == "stop"), len(prompts[r]),
                           tracker.finish[r] or "length", version) for r in range(len(prompts))]

    def _prefill(self, prompts: list[list[int]]) -> dict[int, np.ndarray]:
        """Every prompt into the KV cache, `n_batch` tokens per decode; the logits after each prompt's last token."""
        entries = [(row, position, token, position == len(prompt) - 1)
                   for row, prompt in enumerate(prompts) for position, token in enumerate(prompt)]
        logits = {}
        for start in range(0, len(entries), self.batch_capacity):
            chunk = entries[start:start + self.batch_capacity]
            self._decode(chunk)
            logits.update({row: self._logits(i) for i, (row, _, _, last) in enumerate(chunk) if last})
        return logits

    @property
    def batch_capacity(self) -> int:
        return self.lib.llama_n_batch(self.ctx)

    def _pick(self, logits: np.ndarray | None, answer: list[int], decoding: Decoding,
              allowed: np.ndarray | None = None) -> int:
        """The next token of one row: the answer's repetition penalty (as `AnswerRepetitionPenalty`), the row's
        grammar (`allowed`, as `GrammarLogits`), the tokens no answer may contain left out (as `NeverOutput`), then
        greedy, or temperature + top-p sampling. Rows already finished (no logits) get a placeholder the tracker
        skips."""
        if logits is None:
            return -1
        if answer and decoding.repetition_penalty != 1.0:
            seen = np.unique(answer)
            scores = logits[seen]
            logits[seen] = np.where(scores < 0, scores * decoding.repetition_penalty,
                                    scores / decoding.repetition_penalty)
        if allowed is not None:
            logits[:len(allowed)][~allowed] = -np.inf
            logits[len(allowed):] = -np.inf
        banned = logits[self.never_output]
        logits[self.never_output] = -np.inf
        if not np.isfinite(logits).any():  # the grammar allows only such tokens: keep them (as NeverOutput)
            logits[self.never_output] = banned
        if decoding.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / decoding.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        keep = order[:int(np.searchsorted(np.cumsum(probs[order]), decoding.top_p)) + 1]
        return int(self.rng.choice(keep, p=probs[keep] / probs[keep].sum()))

    def answer_losses(self, examples: list[dict[str, list[int]]], adapter: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Per encoded conversation (`models.encode_conversations`): summed cross-entropy of its supervised tokens
        and their count, from llama.cpp's logits: the held-out loss of what this engine runs."""
        adapter = self.adapter_name(adapter)
        sums, counts = np.zeros(len(examples)), np.zeros(len(examples))
        with self.lock:
            self._set_adapter(adapter)
            for n, example in enumerate(examples):
                ids, labels = example["input_ids"], example["labels"]
                self.lib.llama_memory_clear(self.memory, True)
                for start in range(0, len(ids), LOSS_CHUNK):
                    # the logits at t predict the token at t + 1
                    chunk = [(0, t, ids[t], t + 1 < len(ids) and labels[t + 1] != -100)
                             for t in range(start, min(start + LOSS_CHUNK, len(ids)))]
                    self._decode(chunk)
                    wanted = [(i, labels[t + 1]) for i, (_, t, _, scored) in enumerate(chunk) if scored]
                    if wanted:
                        rows = np.stack([self._logits(i) for i, _ in wanted])
                        sums[n] += answer_cross_entropy(rows, [target for _, target in wanted], self.never_output).sum()
                        counts[n] += len(wanted)
            self.lib.llama_memory_clear(self.memory, True)
        return sums, counts
