"""What the catalog tasks' evaluations share: the run they evaluate (its task, its catalog), their output files and
the table the CLI prints; `evaluate_task` runs one by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ecombot import atomic
from ecombot.catalog import Product, read_catalog
from ecombot.config import EvalConfig
from ecombot.errors import EcombotError
from ecombot.run_dir import RunDir


def catalog_run(adapter: str, task: str) -> tuple[RunDir, str, list[Product]]:
    """The run, the catalog it trained on and that catalog's products; an error if the run is of another task."""
    run = RunDir(adapter)
    run.check_adapter()
    config = (run.info() or {}).get("config", {})
    if config.get("task") != task:
        raise EcombotError(f"{adapter}: not a {task} run (its task is {config.get('task', 'support')!r}); --task "
                           f"{task} evaluates adapters trained with `ecombot train --task {task} --catalog FILE`")
    catalog = config["catalog"]
    return run, catalog, read_catalog(catalog)


def catalog_runs(adapters: list[str], task: str) -> tuple[RunDir, str, list[Product]]:
    """The first run of several compared on one test set: an error unless they share its catalog and test split."""
    runs = [catalog_run(a, task) for a in adapters]
    first, catalog, products = runs[0]
    test = (first.data_dir / "test.jsonl").read_text(encoding="utf-8")
    for run, other, _ in runs[1:]:
        if other != catalog or (run.data_dir / "test.jsonl").read_text(encoding="utf-8") != test:
            raise EcombotError(f"{run.path} and {first.path} were trained on different catalogs or splits; evaluate "
                               "them one at a time")
    return first, catalog, products


def estimate_cell(estimate: dict | None, scale: float = 1) -> str:
    if estimate is None:
        return "–"
    low, high = estimate["ci95"]
    return f"{estimate['value'] * scale:.3g} [{low * scale:.3g}, {high * scale:.3g}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


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
    """`ecombot evaluate --task copy|recommend`: the task's evaluation, its files in cfg.output, its table."""
    if task == "copy":
        from ecombot.evaluate.copy import COLUMNS, copy_rows, evaluate_copy

        result = evaluate_copy(cfg, say)
        return TaskTable(f"product copy: {result['products']} held-out products",
                         ["system"] + [title for _, title, _ in COLUMNS], copy_rows(result))
    if task == "recommend":
        from ecombot.evaluate.recommend import COLUMNS, evaluate_recommend, recommend_rows

        result = evaluate_recommend(cfg, say)
        return TaskTable(f"recommendations: {result['requests']} held-out requests",
                         ["system"] + [title for _, title in COLUMNS], recommend_rows(result))
    raise EcombotError(f"--task {task}: choose support, copy or recommend")
