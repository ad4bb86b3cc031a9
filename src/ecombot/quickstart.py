"""`ecombot quickstart`, the main job: fine-tune the default model on the built-in data, then show
base vs fine-tuned answers and held-out loss before and after, on questions neither saw in training."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ecombot.chat import Engine, fill_placeholders
from ecombot.config import load_config
from ecombot.data import Conversation, read_file
from ecombot.evaluate import heldout_loss
from ecombot.models import load_for_inference
from ecombot.train import train

# Tuned to finish within ~15 minutes on a 2-core CPU (measured: README "Main job").
QUICKSTART = {"max_steps": 130, "learning_rate": 4e-4, "eval_steps": 40, "eval_max_examples": 64, "logging_steps": 10}
HELD_OUT_LOSS_EXAMPLES = 120
SHOWN_QUESTIONS = 5
EXAMPLE_CONTEXT = {"ordernumber": "HP-10482"}  # fills {{Order Number}} as `ecombot chat --context` would


def pick_examples(test: list[Conversation], n: int) -> list[Conversation]:
    """Single-turn test questions from different intents, so the table shows several policies."""
    seen, picked = set(), []
    for conv in test:
        if len(conv.messages) == 2 and conv.intent not in seen:
            seen.add(conv.intent)
            picked.append(conv)
        if len(picked) == n:
            break
    return picked


def run(output: str = "runs/quickstart", max_steps: int | None = None, console: Console | None = None) -> dict:
    console = console or Console()
    started = time.time()
    console.rule("[bold]ecombot quickstart")
    console.print("1/3  Fine-tuning the embedded Gemma 3 270M with LoRA on the built-in Harbor & Pine support data "
                  "(the first run converts the model once, about a minute).")
    cfg = load_config(None, output=output, **{**QUICKSTART, **({"max_steps": max_steps} if max_steps else {})})
    result = train(cfg, overwrite=True)
    console.print(f"     {result.results['steps']} steps in {result.results['train_seconds']:.0f} s, "
                  f"best validation loss {result.results['best_val_loss']:.3f} (step {result.results['best_step']})")

    console.print("2/3  Held-out loss on the test split, base model vs fine-tuned (same weights, adapter off/on).")
    loaded = load_for_inference(adapter=result.run_dir)
    test = read_file(result.run_dir / "data" / "test.jsonl").conversations
    system_prompt = cfg.resolved_system_prompt()
    engine = Engine(loaded, system_prompt)
    scored = test[:HELD_OUT_LOSS_EXAMPLES]
    with engine.base_model():
        before = heldout_loss(loaded.model, loaded.tokenizer, scored, system_prompt, cfg.max_length)
    after = heldout_loss(loaded.model, loaded.tokenizer, scored, system_prompt, cfg.max_length)

    console.print(f"3/3  Answering {SHOWN_QUESTIONS} held-out test questions with both models.")
    examples = pick_examples(test, SHOWN_QUESTIONS)
    questions = [c.messages[:1] for c in examples]
    base_answers = engine.generate(questions, use_base=True)
    tuned_answers = engine.generate(questions)

    table = Table(title="Held-out test questions (never seen in training)", show_lines=True)
    for column in ("question", "reference answer", "base model", "fine-tuned"):
        table.add_column(column, overflow="fold")
    for conv, base, tuned in zip(examples, base_answers, tuned_answers):
        table.add_row(conv.question, *(fill_placeholders(t, EXAMPLE_CONTEXT) for t in (conv.answer, base, tuned)))
    console.print(table)
    losses = Table(title=f"Held-out loss per answer token ({before['tokens']} tokens, {len(scored)} conversations)")
    for column in ("model", "loss", "perplexity"):
        losses.add_column(column)
    losses.add_row("base", f"{before['loss']:.3f}", f"{before['perplexity']:.1f}")
    losses.add_row("fine-tuned", f"{after['loss']:.3f}", f"{after['perplexity']:.1f}")
    console.print(losses)
    elapsed = time.time() - started
    console.print(f"Done in {elapsed / 60:.1f} min. Adapter: {result.run_dir}  —  chat with it: "
                  f"[bold]ecombot chat --adapter {result.run_dir}[/bold]")
    return {"run_dir": str(Path(result.run_dir)), "loss_before": before["loss"], "loss_after": after["loss"],
            "elapsed_s": elapsed, "train": result.results,
            "answers": [{"question": c.question, "reference": c.answer, "base": b, "finetuned": t}
                        for c, b, t in zip(examples, base_answers, tuned_answers)]}
