"""`ecombot quickstart`, the main job: fine-tune the default model on the built-in data, then show
base vs fine-tuned answers and held-out loss before and after, on questions neither saw in training."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from ecombot.chat import Decoding, Engine, fill_placeholders
from ecombot.config import load_config
from ecombot.data import Conversation, read_file
from ecombot.evaluate import heldout_loss
from ecombot.models import load_for_inference
from ecombot.train import train
from ecombot.train.recipe import write_json

# Tuned to finish within ~15 minutes on a 2-core CPU (measured: README "Main job").
QUICKSTART = {"max_steps": 220, "learning_rate": 1e-3, "eval_steps": 55, "eval_max_examples": 64, "logging_steps": 10}
HELD_OUT_LOSS_EXAMPLES = 120
SHOWN_QUESTIONS = 5
EXAMPLE_CONTEXT = {"ordernumber": "HP-10482"}  # fills {{Order Number}} as `ecombot chat --context` would


def shorten(text: str, limit: int = 320) -> str:
    """Base-model answers often loop until the token limit; show the start, not a wall of text."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


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


def run(output: str = "runs/quickstart", max_steps: int | None = None, console: Console | None = None,
        model: str | None = None) -> dict:
    console = console or Console()
    started = time.time()
    console.rule("[bold]ecombot quickstart")
    console.print("1/3  Fine-tuning the embedded Gemma 3 270M with LoRA on the built-in Harbor & Pine support data "
                  "(the first run converts the model once, about a minute).")
    cfg = load_config(None, output=output, model=model, **{**QUICKSTART, **({"max_steps": max_steps} if max_steps else {})})
    result = train(cfg, overwrite=True)
    console.print(f"     {result.results['steps']} steps in {result.results['train_seconds']:.0f} s, "
                  f"best validation loss {result.results['best_val_loss']:.3f} (step {result.results['best_step']})")

    console.print("2/3  Held-out loss on the test split, base model vs fine-tuned (same weights, adapter off/on).")
    loaded = load_for_inference(adapter=result.run_dir)
    test = read_file(result.run_dir / "data" / "test.jsonl").conversations
    system_prompt = cfg.resolved_system_prompt()
    engine = Engine(loaded, system_prompt, Decoding(max_new_tokens=120))
    scored = test[:HELD_OUT_LOSS_EXAMPLES]
    with engine.base_model():
        before = heldout_loss(loaded.model, loaded.tokenizer, scored, system_prompt, cfg.max_length)
    after = heldout_loss(loaded.model, loaded.tokenizer, scored, system_prompt, cfg.max_length)

    console.print(f"3/3  Answering {SHOWN_QUESTIONS} held-out test questions with both models.")
    examples = pick_examples(test, SHOWN_QUESTIONS)
    questions = [c.messages[:1] for c in examples]
    base_answers = engine.generate(questions, use_base=True)
    tuned_answers = engine.generate(questions)

    console.rule("Held-out test questions (never seen in training)")
    for number, (conv, base, tuned) in enumerate(zip(examples, base_answers, tuned_answers), start=1):
        table = Table(show_header=False, box=None, padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, text in (("question", conv.question), ("reference", conv.answer), ("base model", base),
                            ("fine-tuned", tuned)):
            table.add_row(label, shorten(fill_placeholders(text, EXAMPLE_CONTEXT)))
        console.print(f"[bold]{number}.[/bold] intent: {conv.intent}")
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
    summary = {"run_dir": str(result.run_dir), "loss_before": before["loss"], "loss_after": after["loss"],
               "scored_conversations": len(scored), "elapsed_s": round(elapsed, 1), "train": result.results,
               "answers": [{"question": c.question, "intent": c.intent, "reference": c.answer, "base": b,
                            "finetuned": t} for c, b, t in zip(examples, base_answers, tuned_answers)]}
    write_json(result.run_dir / "quickstart.json", summary)
    return summary
