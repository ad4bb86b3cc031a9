"""`ecombot quickstart`, the main job: put the built-in store's policy in a knowledge base, fine-tune the default model
on the built-in data grounded in it, then compare the base model, the retrieval baseline, the fine-tuned model alone
and the grounded bot on held-out questions and on the slices a bot without knowledge cannot answer (`ecombot
evaluate` on the built-in test split)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from types import MappingProxyType

from rich.console import Console
from rich.table import Table

from ecombot import speedups
from ecombot.chat import fill_placeholders
from ecombot.config import load_config
from ecombot.data.builtin import policy_path
from ecombot.evaluate import EvalConfig, Prediction, print_table, run_evaluation
from ecombot.knowledge import STORED_ANSWER_NOTE, KnowledgeBase
from ecombot.models import pick_device, resolve_precision
from ecombot.train import train

# The demo store's own knowledge base, so its policy never mixes into the 'default' base a shop trains with.
KNOWLEDGE = "harbor-pine"


@dataclass(frozen=True)
class Budget:
    """How much the main job trains (overrides of the training defaults) and how many questions per set each system
    answers in its evaluation (the base model often talks until the token limit, so answers are most of its time)."""
    name: str
    train: MappingProxyType
    eval_items: int


# The full budget, ~20 min on a 2-core AMX Xeon (README "Results"); everything else is the training defaults.
REFERENCE = Budget("reference", MappingProxyType({"max_steps": 200, "eval_steps": 50, "eval_max_examples": 64,
                                                  "logging_steps": 10}), 32)
# A CPU without native bf16 trains in fp32 at a fifth to a tenth of that speed (a 2-core AVX2 EPYC: ~1-2 h for the
# full budget). There the main job trains 60 steps at twice the learning rate, which learned faster in 60 steps
# (validation loss 0.261 vs 0.304, policy-edit facts 0.90 vs 0.74, held-out facts 0.86 vs 0.89 on the same 16
# questions; one run each), and asks 16 questions per set (README "Results", "on a CPU without native bf16").
SHORT = Budget("short", MappingProxyType({"max_steps": 60, "learning_rate": 2e-3, "eval_steps": 30,
                                          "eval_max_examples": 32, "logging_steps": 10}), 16)
EVAL_SYSTEMS = ("base", "retrieval", "finetuned", "grounded")
SHOWN_QUESTIONS = 5
SLICE_EXAMPLES = ("unseen_topics", "policy_edits", "not_covered")
SUMMARY_METRICS = ("bleu", "chrf", "rouge_l", "semantic", "intent_accuracy", "loss", "fact_accuracy",
                   "invented_fact_rate", "handoff_precision", "handoff_recall", "false_handoffs",
                   "stored_answers", "facts_left_out")  # in quickstart.json
EXAMPLE_CONTEXT = {"ordernumber": "HP-10482"}  # fills {{Order Number}} as `ecombot chat --context` would


def shorten(text: str, limit: int = 320) -> str:
    """Base-model answers often loop until the token limit; show the start, not a wall of text."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def pick_examples(predictions: list[Prediction], n: int) -> list[Prediction]:
    """Single-turn questions from different intents, so the output shows several policies; the first of each slice
    (a topic never trained on, a changed policy, a question the store's documents do not answer) among them."""
    seen, picked = set(), []
    firsts = [next((p for p in predictions if p.slice == name), None) for name in SLICE_EXAMPLES]
    for p in predictions:
        if p.slice == "heldout" and p.turns == 2 and p.intent not in seen and len(picked) < n - len(SLICE_EXAMPLES):
            seen.add(p.intent)
            picked.append(p)
    return picked + [p for p in firsts if p is not None]


def summary_of(systems: dict) -> dict:
    return {name: {m: getattr(s, m).value if getattr(s, m) else None for m in SUMMARY_METRICS}
            for name, s in systems.items()}


def build_knowledge():
    """The demo store's knowledge base as the quickstart trains on it (its policy page; training adds its pairs)."""
    return KnowledgeBase(None, KNOWLEDGE).add_files([policy_path()])[0]


def trains_on_a_cpu_in_fp32() -> bool:
    """No CUDA and no AVX-512 BF16 or AMX: the quickstart's `precision: auto` then trains in fp32 on the CPU."""
    return pick_device() == "cpu" and resolve_precision() == "fp32"


def pick_budget(fp32_cpu: bool, full: bool) -> Budget:
    """The short budget where training runs in fp32 on a CPU, unless `full` is asked for."""
    return SHORT if fp32_cpu and not full else REFERENCE


def fp32_notice(budget: Budget, steps: int, steps_given: bool) -> str:
    """What fp32 training costs here, what the quickstart does about it, and the way to the other budget."""
    int8 = (" with int8 input gradients (precision int8)"
            if resolve_precision(training=True) == "int8" and speedups.enabled() else "")
    text = (f"This CPU has no native bf16 (AVX-512 BF16 or AMX), so training runs in fp32{int8} at a fifth to a tenth "
            "of the speed of one that has it. ")
    if budget is REFERENCE:
        return text + (f"--full: {steps} steps (a 2-core AVX2 AMD EPYC took 14-28 s per step) and "
                       f"{REFERENCE.eval_items} questions per set (21 min of evaluation there on a slower day); the "
                       f"progress bar shows what is left.")
    measured = (" (2-core AVX2 AMD EPYCs: 27-43 min in all, held-out loss 0.16 instead of 0.04; README, Results)"
                if not steps_given else "")
    return text + (f"The quickstart therefore trains {steps} steps{' (--max-steps)' if steps_given else ''} at lr "
                   f"{SHORT.train['learning_rate']:g} and asks {SHORT.eval_items} questions per set, where the full "
                   f"budget is {REFERENCE.train['max_steps']} steps at lr 0.001 and {REFERENCE.eval_items} "
                   f"questions{measured}. `ecombot quickstart --full` runs the full budget (~1-2 h on a 2-core "
                   f"AVX2 EPYC).")


def run(output: str = "runs/quickstart", max_steps: int | None = None, console: Console | None = None,
        model: str | None = None, full: bool = False) -> dict:
    console = console or Console()
    started = time.time()
    console.rule("[bold]ecombot quickstart")
    added = build_knowledge()
    console.print(f"1/3  Knowledge base '{KNOWLEDGE}': the store's policy ({added.passages} passages from "
                  f"{added.name}, {added.status}); training adds its training questions and answers.")
    console.print("2/3  Fine-tuning the embedded Gemma 3 270M with LoRA on the built-in Harbor & Pine support data, "
                  "every prompt grounded in the knowledge base (the first run converts the model once, about a minute).")
    fp32_cpu = trains_on_a_cpu_in_fp32()
    budget = pick_budget(fp32_cpu, full)
    cfg = load_config(None, output=output, model=model, knowledge=KNOWLEDGE,
                      **{**budget.train, **({"max_steps": max_steps} if max_steps else {})})
    if fp32_cpu:
        console.print(f"     {fp32_notice(budget, cfg.max_steps, bool(max_steps))}")
    result = train(cfg, overwrite=True)
    console.print(f"     {result.steps} steps in {result.train_seconds:.0f} s, "
                  f"best validation loss {result.best_val_loss:.3f} (step {result.best_step})")

    console.print(f"3/3  Evaluating the base model, the retrieval baseline, the fine-tuned adapter alone and the "
                  f"grounded bot on {budget.eval_items} held-out test conversations and on each slice.")
    evaluation = run_evaluation(EvalConfig(adapters=[str(result.run.path)], systems=EVAL_SYSTEMS, limit=budget.eval_items,
                                           output=str(result.run.path / "eval"), seed=cfg.seed,
                                           val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                           max_new_tokens=100), console)
    tuned = result.run.name
    grounded = f"{tuned}+knowledge"

    console.rule("Questions never seen in training")
    examples = pick_examples(evaluation.predictions, SHOWN_QUESTIONS)
    for number, p in enumerate(examples, start=1):
        table = Table(show_header=False, box=None, padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, text in (("question", p.question), ("reference", p.reference),
                            ("base model", p.answers["base"]), ("fine-tuned", p.answers[tuned]),
                            ("grounded", p.answers[grounded])):
            table.add_row(label, shorten(fill_placeholders(text, EXAMPLE_CONTEXT)))
        if p.sources.get(grounded):
            reused = STORED_ANSWER_NOTE if p.sources[grounded][0].get("reused") else ""
            table.add_row("", f"[dim]from: {', '.join(s['label'] for s in p.sources[grounded])}{reused}[/dim]")
        console.print(f"[bold]{number}.[/bold] {'held-out' if p.slice == 'heldout' else p.slice}, intent: {p.intent}")
        console.print(table)
    print_table(evaluation, console)
    before, after = evaluation.systems["base"].loss.value, evaluation.systems[grounded].loss.value
    elapsed = time.time() - started
    console.print(f"Held-out loss per answer token: base {before:.3f} -> grounded fine-tuned {after:.3f}. "
                  f"Done in {elapsed / 60:.1f} min.")
    console.print(f"Report: {evaluation.files['report']}  —  "
                  f"chat with the grounded bot: [bold]ecombot chat --adapter {result.run.path}[/bold]")
    summary = {"run_dir": str(result.run.path), "budget": budget.name, "loss_before": before, "loss_after": after,
               "elapsed_s": round(elapsed, 1), "train": result.to_dict(), "report": str(evaluation.files["report"]),
               "systems": summary_of(evaluation.systems),
               "slices": {name: summary_of(scores.systems) for name, scores in evaluation.slices.items()},
               "answers": [asdict(p) for p in examples]}
    result.run.write_json("quickstart.json", summary)
    return summary
