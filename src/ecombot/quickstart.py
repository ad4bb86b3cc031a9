"""`ecombot quickstart`, the main job: fine-tune the default model on the built-in data, then compare it with the
base model and the retrieval baseline on held-out questions (`ecombot evaluate` on the built-in test split)."""

from __future__ import annotations

import time
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from ecombot.chat import fill_placeholders
from ecombot.config import load_config
from ecombot.evaluate import EvalConfig, Prediction, print_table, run_evaluation
from ecombot.train import train

# Tuned to finish within ~18 minutes on a 2-core CPU, first model conversion included (README "Main job").
QUICKSTART = {"max_steps": 200, "learning_rate": 1e-3, "eval_steps": 50, "eval_max_examples": 64, "logging_steps": 10}
EVAL_SYSTEMS = ("base", "retrieval", "finetuned")
EVAL_ITEMS = 32  # test conversations answered by each system (the base model often talks until the token limit)
SHOWN_QUESTIONS = 5
SUMMARY_METRICS = ("bleu", "chrf", "rouge_l", "semantic", "intent_accuracy", "loss")  # in quickstart.json
EXAMPLE_CONTEXT = {"ordernumber": "HP-10482"}  # fills {{Order Number}} as `ecombot chat --context` would


def shorten(text: str, limit: int = 320) -> str:
    """Base-model answers often loop until the token limit; show the start, not a wall of text."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def pick_examples(predictions: list[Prediction], n: int) -> list[Prediction]:
    """Single-turn test questions from different intents, so the output shows several policies."""
    seen, picked = set(), []
    for p in predictions:
        if p.turns == 2 and p.intent not in seen:
            seen.add(p.intent)
            picked.append(p)
        if len(picked) == n:
            break
    return picked


def run(output: str = "runs/quickstart", max_steps: int | None = None, console: Console | None = None,
        model: str | None = None) -> dict:
    console = console or Console()
    started = time.time()
    console.rule("[bold]ecombot quickstart")
    console.print("1/2  Fine-tuning the embedded Gemma 3 270M with LoRA on the built-in Harbor & Pine support data "
                  "(the first run converts the model once, about a minute).")
    cfg = load_config(None, output=output, model=model, **{**QUICKSTART, **({"max_steps": max_steps} if max_steps else {})})
    result = train(cfg, overwrite=True)
    console.print(f"     {result.steps} steps in {result.train_seconds:.0f} s, "
                  f"best validation loss {result.best_val_loss:.3f} (step {result.best_step})")

    console.print(f"2/2  Evaluating base model, retrieval baseline and fine-tuned adapter on {EVAL_ITEMS} held-out "
                  "test conversations.")
    evaluation = run_evaluation(EvalConfig(adapters=[str(result.run.path)], systems=EVAL_SYSTEMS, limit=EVAL_ITEMS,
                                           output=str(result.run.path / "eval"), seed=cfg.seed,
                                           val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                           max_new_tokens=100), console)
    tuned = result.run.name

    console.rule("Held-out test questions (never seen in training)")
    examples = pick_examples(evaluation.predictions, SHOWN_QUESTIONS)
    for number, p in enumerate(examples, start=1):
        table = Table(show_header=False, box=None, padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, text in (("question", p.question), ("reference", p.reference),
                            ("base model", p.answers["base"]), ("fine-tuned", p.answers[tuned])):
            table.add_row(label, shorten(fill_placeholders(text, EXAMPLE_CONTEXT)))
        console.print(f"[bold]{number}.[/bold] intent: {p.intent}")
        console.print(table)
    print_table(evaluation, console)
    before, after = evaluation.systems["base"].loss.value, evaluation.systems[tuned].loss.value
    elapsed = time.time() - started
    console.print(f"Held-out loss per answer token: base {before:.3f} -> fine-tuned {after:.3f}. "
                  f"Done in {elapsed / 60:.1f} min.")
    console.print(f"Report: {evaluation.files['report']}  —  "
                  f"chat with the adapter: [bold]ecombot chat --adapter {result.run.path}[/bold]")
    summary = {"run_dir": str(result.run.path), "loss_before": before, "loss_after": after,
               "elapsed_s": round(elapsed, 1), "train": result.to_dict(), "report": str(evaluation.files["report"]),
               "systems": {name: {m: getattr(s, m).value if getattr(s, m) else None for m in SUMMARY_METRICS}
                           for name, s in evaluation.systems.items()},
               "answers": [asdict(p) for p in examples]}
    result.run.write_json("quickstart.json", summary)
    return summary
