"""Evaluation stage: held-out loss, the base / few-shot / retrieval / fine-tuned comparison, adapter anatomy."""

from __future__ import annotations

from pathlib import Path

from ecombot.evaluate.loss import heldout_loss, item_losses
from ecombot.evaluate.run import SYSTEMS, EvalConfig, evaluate


def run_evaluation(cfg, console=None) -> dict[str, Path]:
    """Evaluate, inspect each adapter, and write the report into cfg.output."""
    from ecombot.evaluate.anatomy import inspect_adapter
    from ecombot.evaluate.report import write_report

    evaluation = evaluate(cfg, console)
    anatomies = [inspect_adapter(a, cfg.model) for a in cfg.adapters]
    return write_report(evaluation, Path(cfg.output), anatomies)


def print_table(results: dict, console) -> None:
    from rich.table import Table

    from ecombot.evaluate.report import TABLE_METRICS, table_rows

    table = Table(title=f"{results['test_size']} held-out test conversations (95% bootstrap CI)")
    for column in ("system", *TABLE_METRICS):
        table.add_column(column, overflow="fold")
    for row in table_rows(results):
        table.add_row(*row)
    console.print(table)


__all__ = ["EvalConfig", "SYSTEMS", "evaluate", "heldout_loss", "item_losses", "print_table", "run_evaluation"]
