"""Evaluation stage: held-out loss, the base / few-shot / retrieval / fine-tuned / grounded comparison on the held-out
set and the built-in data's slices, adapter anatomy."""

from __future__ import annotations

from pathlib import Path

from ecombot.evaluate.heldout import answer_token_stats, heldout_loss, item_losses
from ecombot.config import SYSTEMS, EvalConfig
from ecombot.evaluate.result import EvalResult, Prediction
from ecombot.evaluate.run import evaluate


def run_evaluation(cfg: EvalConfig, console=None) -> EvalResult:
    """Evaluate, inspect each adapter, and write the report into cfg.output (the result lists the files)."""
    from ecombot.evaluate.anatomy import inspect_adapter
    from ecombot.evaluate.report import write_report

    result = evaluate(cfg, console)
    result.adapter_anatomy = [inspect_adapter(a, cfg.model) for a in cfg.adapters]
    result.files = write_report(result, Path(cfg.output))
    return result


WIDE_ONLY = ("bleu", "chrf", "latency_s", "cut_at_limit", "handoff_precision")  # left to report.md in a terminal under 150 columns


def print_table(result: EvalResult, console) -> None:
    """Compact terminal tables, the held-out set's then each slice's: value ± half-width of the 95% interval
    (report.md has the exact bounds). A metric no system has on a set is left out of its table, and a narrow
    terminal gets the columns that decide (the rest squeezed into 80 columns could not be read)."""
    from rich.table import Table

    columns = {"bleu": ("BLEU", 1), "chrf": ("chrF", 1), "rouge_l": ("ROUGE-L", 1), "semantic": ("semantic", 2),
               "intent_accuracy": ("intent", 2), "loss": ("loss", 2), "latency_s": ("latency s", 1),
               "cut_at_limit": ("cut", 2),
               "fact_accuracy": ("facts", 2), "invented_fact_rate": ("invented", 2),
               "handoff_precision": ("handoff P", 2), "handoff_recall": ("handoff R", 2),
               "false_handoffs": ("false handoff", 2), "stored_answers": ("stored", 2),
               "facts_left_out": ("cut facts", 2)}
    of = result.source.get("heldout_questions")
    sets = [(f"{result.test_size}{f' of {of}' if of else ''} held-out test conversations", result.systems)]
    sets += [(f"slice {name}: {s.test_size} questions", s.systems) for name, s in result.slices.items()]
    if console.width < 150:
        columns = {metric: column for metric, column in columns.items() if metric not in WIDE_ONLY}
    for title, systems in sets:
        shown = {metric: column for metric, column in columns.items()
                 if any(getattr(system, metric) for system in systems.values())}
        table = Table(title=f"{title} (± = 95% bootstrap interval)", show_lines=True)
        table.add_column("system", overflow="fold")  # a long run name wraps, never cut to "…"
        for header, _ in shown.values():
            table.add_column(header, justify="right")
        for name, system in systems.items():
            cells = []
            for metric, (_, digits) in shown.items():
                m = getattr(system, metric)
                half = max(m.value - m.low, m.high - m.value) if m else 0.0
                cells.append(f"{m.value:.{digits}f}\n±{half:.{digits}f}" if m else "–")
            table.add_row(name, *cells)
        console.print(table)


__all__ = ["EvalConfig", "EvalResult", "Prediction", "SYSTEMS", "answer_token_stats", "evaluate", "heldout_loss", "item_losses",
           "print_table", "run_evaluation"]
