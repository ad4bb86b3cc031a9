"""The evaluation recipe: one held-out test set (on the built-in data also its slices), every system answers it,
every metric with a 95% CI.

Systems: `base` (zero-shot with the store prompt), `base-fewshot` (k training pairs as example turns),
`retrieval` (answer of the nearest training question, no generation), `base+knowledge` (the base model grounded in
the store's knowledge base), and per adapter `<run name>` (fine-tuned), `<run name>+retrieval` (fine-tuned with the
top-k retrieved pairs as example turns) and `<run name>+knowledge` (system `grounded`: fine-tuned and grounded).
A grounded system answers a question its knowledge does not cover with the handoff, and one a stored Q&A pair asks
in other words with that pair's answer (knowledge/grounding.py), without generating.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ecombot.chat import BASE, Decoding, GenerationEngine, open_engine
from ecombot.config import BUILTIN_SYSTEM_PROMPT, GENERIC_SYSTEM_PROMPT, SYSTEMS, EvalConfig
from ecombot.config.evaluate import ANSWER_TOKENS
from ecombot.data import Conversation, clean, leaked_questions, prepare, read_file, stratified_order
from ecombot.errors import EcombotError
from ecombot.evaluate import metrics
from ecombot.evaluate.grounded import StoreKnowledge, open_knowledge, own_pair
from ecombot.evaluate.heldout import engine_item_losses
from ecombot.evaluate.result import EvalResult, IntentScores, Prediction, SliceScores, SystemScores
from ecombot.evaluate.slices import EvalSet, builtin_slices
from ecombot.knowledge import Grounding, embed, is_handoff, latest_question
from ecombot.run_dir import RunDir, same_conversations

GROUNDED = {"grounded", "base+knowledge"}  # the systems answering through the knowledge base


@dataclass
class SystemAnswers:
    name: str
    answers: list[str]
    latency_s: list[float]  # per answer: wall time of the batch it was generated in (what a caller waited)
    new_tokens: list[int]
    seconds: float
    loss: tuple[np.ndarray, np.ndarray] | None = None  # per-item loss sums and token counts
    cut: list[bool] | None = None  # per answer: generation stopped at the token limit; None: nothing generated
    groundings: list[Grounding] | None = None  # grounded systems: the passages shown and the coverage decisions
    left_out: list[list[str]] | None = None  # grounded systems: per answer, the sentences the fact check cut

    def handoffs(self, handoff: str) -> list[bool]:
        """Which questions the system handed over: it decided the knowledge does not cover them, or said so."""
        decided = [not g.covered for g in self.groundings] if self.groundings else [False] * len(self.answers)
        return [d or is_handoff(a, handoff) for d, a in zip(decided, self.answers)]


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def adapter_test_split(adapters: list[str]) -> Path | None:
    """The held-out split the adapters' run kept when it trained on a file of the user's: without --data or --test,
    an adapter trained on a store's FAQ is scored on that FAQ's held-out questions, not the built-in store's. None:
    the built-in data (adapters trained on it, or outside ecombot). A learn version counts as its run (its own data is
    feedback, not a split); adapters holding different splits need --data or --test, like a catalog run --task."""
    found: list[tuple[RunDir, str, str | None]] = []  # (run, what it trained on, its kept test split's text)
    for adapter in adapters:
        run = RunDir(adapter)
        if run.path.parent.name == "versions" and (run.path.parents[1] / "versions.json").is_file():
            run = RunDir(run.path.parents[1])
        config = (run.info() or {}).get("config")
        if config is None or config.get("data") is None:
            found.append((run, "the built-in data" if config else "unknown data (no run_config.json)", None))
            continue
        if "support" not in run.tasks():
            raise EcombotError(f"{adapter} is a {config['task']} run: score it with `ecombot evaluate --task "
                               f"{config['task']} --adapter {adapter}`")
        test = run.data_dir / "test.jsonl"
        text = test.read_text(encoding="utf-8") if test.is_file() else ""
        if not text.strip():
            raise EcombotError(f"{adapter} trained on {config['data']} but its run kept no held-out questions "
                               f"({test}): pass --data FILE or --test FILE")
        found.append((run, config["data"], text))
    if any(not same_conversations(text, found[0][2]) for _, _, text in found[1:]):
        raise EcombotError("the adapters hold different test sets (" + ", ".join(
            f"{run.path}: {data}" for run, data, _ in found) + "): pass --data FILE or --test FILE to score them "
            "on one")
    return found[0][0].data_dir / "test.jsonl" if found and found[0][2] is not None else None


def is_run_split(path: Path) -> bool:
    """A test split a run kept (RUN/data/test.jsonl): scored as the run scores it, whether named or found."""
    run = RunDir(path.parent.parent)
    return path.name == "test.jsonl" and run.data_dir == path.parent and run.info() is not None


def load_sets(cfg: EvalConfig) -> tuple[list[Conversation], list[Conversation], dict]:
    """The whole test set (and the training set that retrieval and few-shot draw on), split as `train` does."""
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
    if not test:
        raise EcombotError(f"{cfg.test or cfg.data or 'built-in data'}: the test set is empty (nothing to evaluate)")
    needs_train = {"base-fewshot", "retrieval", "finetuned+retrieval"} & set(cfg.systems)
    if needs_train and not train:
        raise EcombotError(f"systems {', '.join(sorted(needs_train))} need training data: pass --data FILE")
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


def fit_answer_tokens(cfg: EvalConfig, model_spec: str, conversations: list[Conversation], say) -> int:
    """The answer token budget: --max-new-tokens, else room for the longest answer in the data scored and trained on
    (models.answer_token_limit), so no system is cut before the references end; said when above the floor."""
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens
    from ecombot.models import answer_token_counts, answer_token_limit, load_tokenizer, resolve_model

    answers = [a for c in conversations for a in c.answers]
    longest = max(answer_token_counts(load_tokenizer(resolve_model(model_spec)), answers), default=None)
    limit = answer_token_limit(longest, ANSWER_TOKENS)
    if limit > ANSWER_TOKENS:
        say(f"answers may run to {limit} tokens: the longest answer in the data is {longest} (--max-new-tokens sets "
            "another limit)")
    return limit


def generate_all(engine: GenerationEngine, prompts: list[list[dict[str, str]]], adapter: str, batch_size: int,
                 given: list[str | None] | None = None, label: str = "answering",
                 grammars: list[str | None] | None = None) -> SystemAnswers:
    """Answers for the prompts; an item with a `given` answer (the handoff, a stored answer) is not generated: no time,
    no tokens; `grammars`: what each answer may be (chat/grammar.py). More than one batch gets a progress bar with
    its ETA: a store's 450 test questions take each system several minutes on a CPU, which a silent terminal would
    hide."""
    from tqdm.auto import tqdm

    given = given or [None] * len(prompts)
    todo = [i for i, answer in enumerate(given) if answer is None]
    answers, latency, tokens = list(given), [0.0] * len(prompts), [0] * len(prompts)
    cut = [False] * len(prompts)
    started = time.time()
    with tqdm(total=len(todo), desc=label, unit="answer", dynamic_ncols=True,
              disable=len(todo) <= batch_size) as bar:
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            t = time.time()
            batch = engine.generate([prompts[i] for i in rows], adapter,
                                    grammars=grammars and [grammars[i] for i in rows])
            elapsed = time.time() - t
            for i, g in zip(rows, batch):
                answers[i], tokens[i], latency[i], cut[i] = g.text, g.new_tokens, elapsed, g.finish_reason == "length"
            bar.update(len(rows))
    return SystemAnswers("", answers, latency, tokens, time.time() - started, cut=cut)


class Contestants:
    """Every system of one evaluation, loaded once, ready to answer any set of questions."""

    def __init__(self, cfg: EvalConfig, train: list[Conversation], base_prompt: str, scored: list[Conversation], say):
        from ecombot.models import base_model_spec

        self.cfg = cfg
        self.retriever = Retriever(train) if train else None
        self.fewshot = example_turns(fewshot_pairs(train, cfg.fewshot_k, cfg.seed)) if train else []
        self.model_spec = base_model_spec(cfg.model, cfg.adapters[0] if cfg.adapters else None)
        names = [Path(a).resolve().name for a in cfg.adapters]
        runs = [(kind, kind, BASE) for kind in ("base", "base-fewshot", "base+knowledge")]
        for name in names:
            runs += [("finetuned", name, name), ("finetuned+retrieval", f"{name}+retrieval", name),
                     ("grounded", f"{name}+knowledge", name)]
        self.runs = [run for run in runs if run[0] in cfg.systems]  # (kind, system name, adapter)
        self.prompts_used: dict[str, str | None] = {}
        self.engine = None
        if self.runs:
            cfg.max_new_tokens = fit_answer_tokens(cfg, self.model_spec, scored + train, say)
            self.engine = open_engine(cfg.model, [(name, Path(path)) for name, path in zip(names, cfg.adapters)],
                                      Decoding(max_new_tokens=cfg.max_new_tokens), system_prompt=base_prompt,
                                      engine=cfg.engine, max_batch=cfg.batch_size)

    def answer(self, questions: EvalSet, knowledge: StoreKnowledge, say) -> list[SystemAnswers]:
        test, cfg = questions.test, self.cfg
        queries = [latest_question(c.messages) for c in test]
        systems: list[SystemAnswers] = []
        if "retrieval" in cfg.systems:
            started = time.time()
            answers = [hits[0].answer for hits in self.retriever.top(queries, 1)]
            seconds = time.time() - started
            systems.append(SystemAnswers("retrieval", answers, [seconds / len(test)] * len(test), [0] * len(test),
                                         seconds))
        kinds = {kind for kind, _, _ in self.runs}
        retrieved = ([example_turns(hits) for hits in self.retriever.top(queries, cfg.retrieval_k)]
                     if "finetuned+retrieval" in kinds else None)
        groundings, ground_s = None, 0.0
        if kinds & GROUNDED:
            started = time.time()
            groundings = knowledge.grounder.ground_many([c.messages[:-1] for c in test], [own_pair(c) for c in test])
            ground_s = time.time() - started
        for kind, name, adapter in self.runs:
            say(f"answering {len(test)} {questions.name} questions with {name} ...")
            if kind in GROUNDED:  # the passages sit in the last user turn; the reference stays the answer
                convs = [replace(c, messages=g.messages + c.messages[-1:]) for c, g in zip(test, groundings)]
                prefixes = [[]] * len(test)
                given = [g.answer for g in groundings]  # the handoff, a stored answer, or None: generated
            else:
                convs, given = test, None
                prefixes = {"base-fewshot": [self.fewshot] * len(test), "finetuned+retrieval": retrieved}.get(
                    kind, [[]] * len(test))
            answered = generate_all(self.engine, [p + c.messages[:-1] for p, c in zip(prefixes, convs)], adapter,
                                    cfg.batch_size, given, label=name)
            if groundings and kind in GROUNDED:
                answered.groundings = groundings
                check_facts(answered, knowledge.grounder)
                answered.latency_s = [t + ground_s / len(test) for t in answered.latency_s]
                answered.seconds += ground_s
            answered.loss = engine_item_losses(self.engine, convs, adapter, prefixes=prefixes)
            answered.name = name
            self.prompts_used[name] = self.engine.system_prompt(adapter)
            systems.append(answered)
        return systems


def check_facts(answered: SystemAnswers, grounder) -> None:
    """The generated answers as chat and serve would give them: through the grounder's fact check (off: unchanged)."""
    checks = [grounder.fact_check(g) for g in answered.groundings]
    answered.answers = [check.check(a) if check else a for check, a in zip(checks, answered.answers)]
    answered.left_out = [check.left_out if check else [] for check in checks]


def handoff_estimates(predicted: list[bool], truth: list[bool],
                      indices: np.ndarray) -> dict[str, metrics.Estimate | None]:
    return {name: metrics.subset_mean_estimate(values, indices)
            for name, values in metrics.handoff_outcomes(predicted, truth).items()}


def score(system: SystemAnswers, test: list[Conversation], pool_vectors: np.ndarray, pool_intents: list[str],
          indices: np.ndarray, knowledge: StoreKnowledge) -> SystemScores:
    refs = [c.answer for c in test]
    hyps = system.answers
    answer_vectors, ref_vectors = embed(hyps), embed(refs)
    semantic = metrics.cosine_rows(answer_vectors, ref_vectors)
    rouge = metrics.rouge_l(hyps, refs)
    intent_accuracy = correct = None
    if all(c.intent for c in test) and {c.intent for c in test} & set(pool_intents):  # not on unseen intents
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
    truth = [is_handoff(ref, knowledge.handoff) for ref in refs]
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
        fact_accuracy=metrics.subset_mean_estimate(metrics.fact_accuracy(hyps, refs), indices),
        invented_fact_rate=metrics.subset_mean_estimate(metrics.invented_fact_rate(hyps, refs, knowledge.facts),
                                                        indices),
        **handoff_estimates(system.handoffs(knowledge.handoff), truth, indices),
        stored_answers=metrics.mean_estimate([g.reused is not None for g in system.groundings], indices)
        if system.groundings else None,
        cut_at_limit=metrics.mean_estimate(system.cut, indices) if system.cut is not None else None,
        facts_left_out=metrics.mean_estimate([bool(cut) for cut in system.left_out], indices)
        if system.left_out is not None and knowledge.grounder.check_facts else None,
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


def predictions(questions: EvalSet, systems: list[SystemAnswers]) -> list[Prediction]:
    return [Prediction(latest_question(c.messages), c.intent, len(c.messages), c.answer,
                       {s.name: s.answers[i] for s in systems}, questions.name,
                       {s.name: s.groundings[i].sources for s in systems if s.groundings},
                       {s.name: s.left_out[i] for s in systems if s.left_out and s.left_out[i]})
            for i, c in enumerate(questions.test)]


def evaluate(cfg: EvalConfig, console=None) -> EvalResult:
    unknown = set(cfg.systems) - set(SYSTEMS)
    if unknown:
        raise EcombotError(f"unknown system(s) {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
    if not cfg.adapters:
        cfg.systems = tuple(s for s in cfg.systems if not s.startswith("finetuned") and s != "grounded")
    say = console.print if console else (lambda *a, **k: None)
    if not cfg.data and not cfg.test:
        kept = adapter_test_split(cfg.adapters)
        if kept:
            cfg.test = str(kept)
            say(f"test set: the held-out split of {RunDir(kept.parent.parent).name}'s own data, kept by train "
                f"({kept}; --data or --test chooses another)")
    test, train, source = load_sets(cfg)
    builtin = cfg.data is None and cfg.test is None
    # a run's kept split, named or found, is already in the split's stratified order
    picked = bool(cfg.test and not is_run_split(Path(cfg.test)) and cfg.limit and cfg.limit < len(test))
    if picked:  # a file of the user's, often sorted by intent: its first N could be one intent
        test = stratified_order(test, cfg.seed)
    sets = [EvalSet("heldout", test[: cfg.limit] if cfg.limit else test)]
    if builtin and cfg.slices:
        sets += builtin_slices(test, cfg.seed, cfg.limit)
    if len(sets[0].test) < len(test):
        # The split's order is seeded and interleaves the intents in proportion (data/split.py), so the first N
        # are a stratified sample, the same for every system and every run with this seed.
        source["heldout_questions"] = len(test)
        if picked:
            source["heldout_order"] = f"stratified by intent, seed {cfg.seed}"
        order = (f"a seeded sample of {cfg.test}, stratified by intent" if picked else
                 f"the first of {cfg.test}, the run's split" if cfg.test else
                 "the first of the seeded, intent-stratified split")
        say(f"scoring {len(sets[0].test)} of the {len(test)} held-out questions ({order}; `ecombot evaluate "
            f"--limit 0` scores all {len(test)})")
    source["leaked_test_questions"] = len(leaked_questions(train, sets[0].test))
    if source["leaked_test_questions"]:
        say(f"[yellow]warning:[/yellow] {source['leaked_test_questions']} test question(s) also appear in the "
            "training data: scores of fine-tuned and retrieval systems are inflated (flagged in results.json)")
    knowledge = open_knowledge(cfg, train, builtin, grounded=bool(GROUNDED & set(cfg.systems)))
    if GROUNDED & set(cfg.systems) and not knowledge.grounder:
        say(f"grounded systems skipped: knowledge base {knowledge.info['name']!r} is "
            + ("empty (ecombot knowledge add FILE)" if knowledge.info["name"] != "none" else "turned off"))
        cfg.systems = tuple(s for s in cfg.systems if s not in GROUNDED)
    if knowledge.info.get("changed_since_training"):
        say(f"[yellow]warning:[/yellow] knowledge base {knowledge.info['name']} changed since the adapter trained")
    base_prompt = cfg.system_prompt or (BUILTIN_SYSTEM_PROMPT if builtin else GENERIC_SYSTEM_PROMPT)
    contestants = Contestants(cfg, train, base_prompt, [c for s in sets for c in s.test], say)
    pool = [c for c in train if c.intent]
    pool_vectors = embed([c.answer for c in pool]) if pool else np.zeros((0, 384))
    pool_intents = [c.intent for c in pool]

    scores: dict[str, dict[str, SystemScores]] = {}
    predicted: list[Prediction] = []
    pooled: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))  # system -> handoffs, truth
    for questions in sets:
        seen = knowledge.edited(questions.edits)
        systems = contestants.answer(questions, seen, say)
        indices = metrics.bootstrap_indices(len(questions.test), seed=cfg.seed)
        scores[questions.name] = {s.name: score(s, questions.test, pool_vectors, pool_intents, indices, seen)
                                  for s in systems}
        predicted += predictions(questions, systems)
        for s in systems:
            pooled[s.name][0].extend(s.handoffs(seen.handoff))
            pooled[s.name][1].extend(is_handoff(c.answer, seen.handoff) for c in questions.test)
    handoff = {}
    if len(sets) > 1:
        indices = metrics.bootstrap_indices(sum(len(s.test) for s in sets), seed=cfg.seed)
        handoff = {name: handoff_estimates(*outcomes, indices) for name, outcomes in pooled.items()}
    return EvalResult(
        config=replace(cfg), model=contestants.model_spec, adapters=[str(Path(a).resolve()) for a in cfg.adapters],
        source=source, test_size=len(sets[0].test), train_size=len(train), system_prompts=contestants.prompts_used,
        bootstrap_samples=metrics.BOOTSTRAP_SAMPLES, systems=scores["heldout"], predictions=predicted,
        slices={s.name: SliceScores(len(s.test), scores[s.name]) for s in sets[1:]}, handoff=handoff,
        knowledge=knowledge.info,
    )
