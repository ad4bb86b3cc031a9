"""The evaluation recipe: one held-out test set, every system answers it, every metric with a 95% CI.

Systems: `base` (zero-shot with the store prompt), `base-fewshot` (k training pairs as example turns),
`retrieval` (answer of the nearest training question, no generation), and per adapter `<run name>`
(fine-tuned) and `<run name>+retrieval` (fine-tuned with the top-k retrieved pairs as example turns).
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ecombot.chat import BASE, Decoding, GenerationEngine, TransformersEngine
from ecombot.config import BUILTIN_SYSTEM_PROMPT, GENERIC_SYSTEM_PROMPT, SYSTEMS, EvalConfig
from ecombot.data import Conversation, clean, leaked_questions, prepare, read_file
from ecombot.errors import EcombotError
from ecombot.evaluate import metrics
from ecombot.knowledge import embed
from ecombot.evaluate.heldout import item_losses
from ecombot.evaluate.result import EvalResult, IntentScores, Prediction, SystemScores
from ecombot.run_dir import RunDir

@dataclass
class SystemAnswers:
    name: str
    answers: list[str]
    latency_s: list[float]  # per answer: wall time of the batch it was generated in (what a caller waited)
    new_tokens: list[int]
    seconds: float
    loss: tuple[np.ndarray, np.ndarray] | None = None  # per-item loss sums and token counts


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_sets(cfg: EvalConfig) -> tuple[list[Conversation], list[Conversation], dict]:
    """The test set (and the training set that retrieval and few-shot draw on), split as `train` does."""
    if cfg.test:
        test, report = clean(read_file(cfg.test))
        train: list[Conversation] = []
        source = {"test": cfg.test, "test_sha256": file_hash(Path(cfg.test)), "dropped_from_test": dict(report.dropped)}
        if cfg.data:
            train = prepare(cfg.data, cfg.val_fraction, cfg.test_fraction, cfg.seed).split.train
            source.update(data=cfg.data, data_sha256=file_hash(Path(cfg.data)))
        elif cfg.adapters and (train_file := RunDir(cfg.adapters[0]).train_split()):
            train = read_file(train_file).conversations
            source.update(data=str(train_file), data_sha256=file_hash(train_file))
    else:
        prepared = prepare(cfg.data, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        test, train = prepared.split.test, prepared.split.train
        path = Path(prepared.report.path)
        source = {"data": str(path), "data_sha256": file_hash(path), "split_seed": cfg.seed}
    if cfg.limit:
        test = test[: cfg.limit]
    if not test:
        raise EcombotError(f"{cfg.test or cfg.data or 'built-in data'}: the test set is empty (nothing to evaluate)")
    needs_train = {"base-fewshot", "retrieval", "finetuned+retrieval"} & set(cfg.systems)
    if needs_train and not train:
        raise EcombotError(f"systems {', '.join(sorted(needs_train))} need training data: pass --data FILE")
    source["leaked_test_questions"] = len(leaked_questions(train, test))
    return test, train, source


class Retriever:
    """Nearest training question by sentence embedding."""

    def __init__(self, train: list[Conversation]):
        self.pairs = [c for c in train if len(c.messages) >= 2]
        self.vectors = embed([c.question for c in self.pairs])

    def top(self, queries: list[str], k: int) -> list[list[Conversation]]:
        scores = embed(queries) @ self.vectors.T
        order = np.argsort(-scores, axis=1)[:, :k]
        return [[self.pairs[i] for i in row] for row in order]


def example_turns(pairs: list[Conversation]) -> list[dict[str, str]]:
    turns = []
    for pair in pairs:
        turns += [{"role": "user", "content": pair.question}, {"role": "assistant", "content": pair.answer}]
    return turns


def fewshot_pairs(train: list[Conversation], k: int, seed: int) -> list[Conversation]:
    """k single-turn training pairs from different intents (seeded), the same for every test item."""
    rng = random.Random(seed)
    candidates = [c for c in train if len(c.messages) == 2]
    rng.shuffle(candidates)
    picked, intents = [], set()
    for conv in candidates:
        if conv.intent not in intents or conv.intent is None:
            picked.append(conv)
            intents.add(conv.intent)
        if len(picked) == k:
            break
    return picked


def generate_all(engine: GenerationEngine, prompts: list[list[dict[str, str]]], adapter: str, batch_size: int) -> SystemAnswers:
    answers, latency, tokens = [], [], []
    started = time.time()
    for start in range(0, len(prompts), batch_size):
        t = time.time()
        batch = engine.generate(prompts[start:start + batch_size], adapter)
        elapsed = time.time() - t
        answers += [g.text for g in batch]
        tokens += [g.new_tokens for g in batch]
        latency += [elapsed] * len(batch)
    return SystemAnswers("", answers, latency, tokens, time.time() - started)


def score(system: SystemAnswers, test: list[Conversation], pool_vectors: np.ndarray, pool_intents: list[str],
          indices: np.ndarray) -> SystemScores:
    refs = [c.answer for c in test]
    hyps = system.answers
    answer_vectors, ref_vectors = embed(hyps), embed(refs)
    semantic = metrics.cosine_rows(answer_vectors, ref_vectors)
    rouge = metrics.rouge_l(hyps, refs)
    intent_accuracy = correct = None
    if all(c.intent for c in test) and pool_intents:
        predicted = metrics.nearest_intents(answer_vectors, pool_vectors, pool_intents)
        correct = [float(p == c.intent) for p, c in zip(predicted, test)]
        intent_accuracy = metrics.mean_estimate(correct, indices)
    loss = perplexity = None
    if system.loss is not None:
        sums, counts = system.loss
        boot = sums[indices].sum(axis=1) / np.maximum(counts[indices].sum(axis=1), 1)
        low, high = np.percentile(boot, [2.5, 97.5])
        loss = metrics.Estimate(float(sums.sum() / counts.sum()), float(low), float(high))
        perplexity = metrics.Estimate(*(float(np.exp(min(x, 50))) for x in (loss.value, loss.low, loss.high)))
    tokens = sum(system.new_tokens)
    return SystemScores(
        bleu=metrics.corpus_bleu(hyps, refs, indices),
        chrf=metrics.corpus_chrf(hyps, refs, indices),
        rouge_l=metrics.mean_estimate(rouge, indices),
        semantic=metrics.mean_estimate(semantic, indices),
        intent_accuracy=intent_accuracy, loss=loss, perplexity=perplexity,
        latency_s=metrics.mean_estimate(system.latency_s, indices),
        answer_tokens=metrics.mean_estimate(system.new_tokens, indices),
        tokens_per_s=tokens / system.seconds if system.seconds > 0 and tokens else None,
        seconds=system.seconds,
        per_intent=per_intent(test, semantic.tolist(), rouge, correct),
    )


def per_intent(test: list[Conversation], semantic: list[float], rouge_l: list[float],
               intent_correct: list[float] | None) -> dict[str, IntentScores]:
    out: dict[str, IntentScores] = {}
    for intent in sorted({c.intent for c in test if c.intent}):
        rows = [i for i, c in enumerate(test) if c.intent == intent]
        means = (None if values is None else float(np.mean([values[i] for i in rows]))
                 for values in (semantic, rouge_l, intent_correct))
        out[intent] = IntentScores(len(rows), *means)
    return out


def evaluate(cfg: EvalConfig, console=None) -> EvalResult:
    from ecombot.models import load_for_inference

    unknown = set(cfg.systems) - set(SYSTEMS)
    if unknown:
        raise EcombotError(f"unknown system(s) {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
    if {"finetuned", "finetuned+retrieval"} & set(cfg.systems) and not cfg.adapters:
        cfg.systems = tuple(s for s in cfg.systems if not s.startswith("finetuned"))
    say = console.print if console else (lambda *a, **k: None)
    test, train, source = load_sets(cfg)
    if source["leaked_test_questions"]:
        say(f"[yellow]warning:[/yellow] {source['leaked_test_questions']} test question(s) also appear in the "
            "training data: scores of fine-tuned and retrieval systems are inflated (flagged in results.json)")
    base_prompt = cfg.system_prompt or (BUILTIN_SYSTEM_PROMPT if cfg.data is None and cfg.test is None
                                        else GENERIC_SYSTEM_PROMPT)
    prompts_used: dict[str, str | None] = {}
    retriever = Retriever(train) if train else None
    pool = [c for c in train if c.intent]
    pool_vectors = embed([c.answer for c in pool]) if pool else np.zeros((0, 384))
    pool_intents = [c.intent for c in pool]
    prompts = [c.messages[:-1] for c in test]
    queries = [next(m["content"] for m in reversed(c.messages) if m["role"] == "user") for c in test]
    systems: list[SystemAnswers] = []

    if "retrieval" in cfg.systems:
        started = time.time()
        answers = [hits[0].answer for hits in retriever.top(queries, 1)]
        seconds = time.time() - started
        systems.append(SystemAnswers("retrieval", answers, [seconds / len(test)] * len(test), [0] * len(test), seconds))

    model_spec = cfg.model or (RunDir(cfg.adapters[0]).base_model() if cfg.adapters else None)
    if {"base", "base-fewshot", "finetuned", "finetuned+retrieval"} & set(cfg.systems):
        names = [Path(a).resolve().name for a in cfg.adapters]
        loaded = load_for_inference(model=model_spec, adapter=cfg.adapters[0] if cfg.adapters else None,
                                    adapter_name=names[0] if names else "default")
        engine = TransformersEngine(loaded, base_prompt, Decoding(max_new_tokens=cfg.max_new_tokens))
        fewshot = example_turns(fewshot_pairs(train, cfg.fewshot_k, cfg.seed)) if train else []
        retrieved = ([example_turns(hits) for hits in retriever.top(queries, cfg.retrieval_k)]
                     if retriever and "finetuned+retrieval" in cfg.systems else None)
        runs = [("base", "base", [], BASE), ("base-fewshot", "base-fewshot", fewshot, BASE)]
        for path, name in zip(cfg.adapters[1:], names[1:]):
            engine.add_adapter(name, path)
        for name in names:
            runs += [("finetuned", name, [], name), ("finetuned+retrieval", f"{name}+retrieval", retrieved, name)]
        for kind, name, prefix, adapter in runs:
            if kind not in cfg.systems:
                continue
            prefixes = prefix if kind == "finetuned+retrieval" else [prefix] * len(test)
            say(f"answering {len(test)} test questions with {name} ...")
            answered = generate_all(engine, [p + q for p, q in zip(prefixes, prompts)], adapter, cfg.batch_size)
            with engine.using(adapter):
                answered.loss = item_losses(loaded.model, loaded.tokenizer, test, engine.system_prompt(adapter),
                                            prefixes=prefixes)
            answered.name = name
            prompts_used[name] = engine.system_prompt(adapter)
            systems.append(answered)

    indices = metrics.bootstrap_indices(len(test), seed=cfg.seed)
    return EvalResult(
        config=replace(cfg), model=model_spec, adapters=[str(Path(a).resolve()) for a in cfg.adapters], source=source,
        test_size=len(test), train_size=len(train), system_prompts=prompts_used,
        bootstrap_samples=metrics.BOOTSTRAP_SAMPLES,
        systems={s.name: score(s, test, pool_vectors, pool_intents, indices) for s in systems},
        predictions=[Prediction(q, c.intent, len(c.messages), c.answer, {s.name: s.answers[i] for s in systems})
                     for i, (q, c) in enumerate(zip(queries, test))],
    )
