"""What the catalog tasks' evaluations share: the run they evaluate (its task, its catalog), their output files and
the table the CLI prints; `evaluate_task` runs one by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ecombot import atomic
from ecombot.catalog import Product, read_catalog
from ecombot.chat import BASE, Decoding, GenerationEngine, open_engine
from ecombot.config import EvalConfig
from ecombot.data import Conversation, read_file
from ecombot.errors import EcombotError
from ecombot.models import base_model_spec
from ecombot.evaluate import metrics
from ecombot.evaluate.run import SystemAnswers, example_turns, fewshot_pairs, fit_answer_tokens
from ecombot.run_dir import RunDir, same_conversations

# What `evaluate --task` can compare (all by default): the search baseline (recommend only), the base model shown k
# solved examples, and the adapters (--adapter, each by its run's name).
TASK_SYSTEMS = {"copy": ("base-fewshot", "finetuned"), "recommend": ("search", "base-fewshot", "finetuned")}


def catalog_run(adapter: str, task: str) -> tuple[RunDir, str, list[Product]]:
    """The run, the catalog it trained on and that catalog's products; an error if the run is of another task."""
    run = RunDir(adapter)
    run.check_adapter()
    trained, catalog = run.task()
    if task not in run.tasks():
        raise EcombotError(f"{adapter}: not a {task} run (its task is {trained!r}); --task {task} evaluates adapters "
                           f"trained with `ecombot train --task {task} --catalog FILE`")
    return run, catalog, read_catalog(catalog)


def task_split(run: RunDir, task: str, name: str) -> Path:
    """One split file (train, validation or test) of `task` in the run (its own folder in a multi-task run)."""
    return run.split_dir(task) / f"{name}.jsonl"


def catalog_runs(adapters: list[str], task: str) -> tuple[RunDir, str, list[Product]]:
    """The first run of several compared on one test set: an error unless they share its catalog and test split."""
    if not adapters:
        raise EcombotError(f"--task {task} needs --adapter RUN (a run trained with --task {task})")
    runs = [catalog_run(a, task) for a in adapters]
    first, catalog, products = runs[0]
    test = task_split(first, task, "test").read_text(encoding="utf-8")
    for run, other, _ in runs[1:]:
        if other != catalog or not same_conversations(task_split(run, task, "test").read_text(encoding="utf-8"), test):
            raise EcombotError(f"{run.path} and {first.path} were trained on different catalogs or splits; evaluate "
                               "them one at a time")
    return first, catalog, products


def estimate_cell(estimate: dict | None, scale: float = 1) -> str:
    if estimate is None:
        return "–"
    low, high = estimate["ci95"]
    return f"{estimate['value'] * scale:.3g} [{low * scale:.3g}, {high * scale:.3g}]"


def generation_scores(answered: SystemAnswers, indices) -> dict:
    """What every generating system reports beside its task's scores: its time, and the share of its answers the token
    limit stopped (results.json's max_new_tokens), as support's evaluation reports them."""
    return {"seconds": round(answered.seconds, 1),
            "cut_at_limit": metrics.mean_estimate(answered.cut, indices).to_dict()}


def held_out(run: RunDir, task: str, cfg: EvalConfig, say=print) -> list[Conversation]:
    """The run's held-out items of `task`, the first `cfg.limit` of them (said when that leaves some out)."""
    test = read_file(task_split(run, task, "test")).conversations
    if cfg.limit and len(test) > cfg.limit:
        say(f"scoring {cfg.limit} of the {len(test)} held-out items (the first of the run's seeded split; "
            f"`ecombot evaluate --limit 0` scores all {len(test)})")
    return test[:cfg.limit or None]


def answering_systems(cfg: EvalConfig, run: RunDir, task: str, scored: list[Conversation], say,
                      repetition_penalty: float = Decoding.repetition_penalty
                      ) -> tuple[GenerationEngine, list[tuple[str, str, list[dict]]]]:
    """One engine, and each system of cfg.systems as (name, adapter, example turns before the prompt): the base model
    shown k of the run's training conversations of `task`, then every adapter by its run's name. The answer limit
    fits those training answers and the `scored` items' references, as support's evaluation does."""
    names = [Path(a).resolve().name for a in cfg.adapters] if "finetuned" in cfg.systems else []
    model_spec = base_model_spec(cfg.model, run.path)  # the run's own base even when no adapter is compared
    train = read_file(task_split(run, task, "train")).conversations
    cfg.max_new_tokens = fit_answer_tokens(cfg, model_spec, train + scored, say)
    engine = open_engine(model_spec, [(n, Path(a)) for n, a in zip(names, cfg.adapters)],
                         Decoding(max_new_tokens=cfg.max_new_tokens, repetition_penalty=repetition_penalty),
                         system_prompt=None, engine=cfg.engine,
                         max_batch=cfg.batch_size)
    fewshot = example_turns(fewshot_pairs(train, cfg.fewshot_k, cfg.seed))
    return engine, [("base-fewshot", BASE, fewshot)] * ("base-fewshot" in cfg.systems) + [(n, n, []) for n in names]


def write_outputs(output: str, result: dict, predictions: list[dict], report: str) -> None:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "results.json", result)
    atomic.write_text(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions))
    atomic.write_text(out / "report.md", report)


@dataclass
class TaskTable:
    title: str
    header: list[str]
    rows: list[list[str]]


def evaluate_task(task: str, cfg: EvalConfig, say=print) -> TaskTable:
    """`ecombot evaluate --task copy|recommend`: the task's evaluation of cfg.systems (TASK_SYSTEMS), its files in
    cfg.output, its table."""
    if task not in TASK_SYSTEMS:
        raise EcombotError(f"--task {task}: choose support, copy or recommend")
    unknown = [s for s in cfg.systems if s not in TASK_SYSTEMS[task]]
    if unknown or not cfg.systems:
        raise EcombotError(f"--task {task} compares {', '.join(TASK_SYSTEMS[task])} (--systems, comma-separated); "
                           f"got {', '.join(unknown) or 'none'}")
    if task == "copy":
        from ecombot.evaluate.copy import COLUMNS, copy_rows, evaluate_copy

        result = evaluate_copy(cfg, say)
        return TaskTable(f"product copy: {result['products']} held-out products",
                         ["system"] + [title for _, title, _ in COLUMNS], copy_rows(result))
    from ecombot.evaluate.recommend import COLUMNS, evaluate_recommend, recommend_rows

    result = evaluate_recommend(cfg, say)
    return TaskTable(f"recommendations: {result['requests']} held-out requests",
                     ["system"] + [title for _, title in COLUMNS], recommend_rows(result))
