"""One multi-task adapter against one adapter per task (support, product copy, recommendations), on the built-in
store and catalog: does training the three tasks into one adapter cost any task its quality (interference)?

Four runs of `ecombot train`, each with the defaults but the step budget: a support run (grounded in the built-in
policy, with the catalog's product questions, as a support run with a catalog trains), a copy run and a recommend
run of `--steps` steps each, and one `--task support,copy,recommend` run of 3 x `--steps` steps (the same compute
in all, its batches drawn from the three tasks' data in proportion to their sizes). Every task's test set is the
same for both adapters (a multi-task run splits each task's data as a run of that task alone does). Then each
task's evaluation of both: support (`evaluate --systems grounded --no-slices`), copy and recommend (`evaluate
--task`), with 95% intervals. The commands run as a user runs them; their outputs stay in --work.

    python benchmarks/multitask.py --steps 100 --output benchmarks/results/multitask_<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = "multitask-bench"

# (task, metric, title, scale) in the table: each task's own measures, as its evaluation reports them
MEASURES = [("support", "semantic", "support semantic", 1), ("support", "intent_accuracy", "support intent", 1),
            ("support", "fact_accuracy", "support facts", 1), ("support", "rouge_l", "support ROUGE-L", 1),
            ("support", "false_handoffs", "support false handoffs", 1),
            ("copy", "attribute_coverage", "copy attribute coverage", 1),
            ("copy", "contradicted_attribute_rate", "copy contradicted", 100), ("copy", "rouge_l", "copy ROUGE-L", 1),
            ("recommend", "constraints_met_per_request", "recommend constraints met", 100),
            ("recommend", "hit_at_1_ci", "recommend hit@1", 100), ("recommend", "hit_at_k_ci", "recommend hit@3", 100)]


def ecombot(*args: str, log: Path) -> float:
    """Runs one ecombot command (its output appended to `log`); its wall time in seconds."""
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ ecombot {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-m", "ecombot", *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"ecombot {' '.join(args)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def knowledge_db(work: Path) -> str:
    return f"sqlite:///{work / 'knowledge.db'}"


def train_runs(args, work: Path, log: Path) -> dict[str, dict]:
    db = knowledge_db(work)
    ecombot("knowledge", "add", str(ROOT / "src/ecombot/data/builtin/policy.md"), "--name", KNOWLEDGE, "--db", db,
            log=log)
    grounded = ["--knowledge", KNOWLEDGE, "--db", db, *(["--data", args.data] if args.data else [])]
    runs = {"support": ["--catalog", args.catalog, *grounded], "copy": ["--task", "copy", "--catalog", args.catalog],
            "recommend": ["--task", "recommend", "--catalog", args.catalog],
            "multi": ["--task", "support,copy,recommend", "--catalog", args.catalog, *grounded]}
    out = {}
    for name, flags in runs.items():
        steps = args.steps * (3 if name == "multi" else 1)
        seconds = ecombot("train", *flags, *model_flag(args), "--max-steps", str(steps), "--output", str(work / name),
                          "--overwrite", log=log)
        info = json.loads((work / name / "run_config.json").read_text())
        results = info["results"]
        out[name] = {"steps": results["steps"], "best_step": results["best_step"],
                     "best_val_loss": results["best_val_loss"], "train_seconds": results["train_seconds"],
                     "command_seconds": round(seconds, 1), "recipe": info["recipe"], "split": results["split"],
                     "other_tasks": json.loads((work / name / "data_summary.json").read_text()).get("other_tasks")}
    return out


def evaluations(args, work: Path, log: Path) -> dict[str, dict[str, dict]]:
    """Each task's scores of its own adapter and of the multi-task one: {task: {"own"|"multi": system scores}}."""
    db = knowledge_db(work)
    per_task = {"support": ["--systems", "grounded", "--no-slices", "--limit", str(args.support_limit),
                            "--knowledge", KNOWLEDGE, "--db", db],
                "copy": ["--task", "copy", "--systems", "finetuned", "--limit", "0"],
                "recommend": ["--task", "recommend", "--systems", "finetuned", "--limit", str(args.recommend_limit),
                              "--max-new-tokens", str(args.max_new_tokens or 120)]}
    if args.max_new_tokens:
        per_task["support"] += ["--max-new-tokens", str(args.max_new_tokens)]
        per_task["copy"] += ["--max-new-tokens", str(args.max_new_tokens)]
    scores: dict[str, dict[str, dict]] = {}
    for task, flags in per_task.items():
        for which, run in (("own", task), ("multi", "multi")):
            output = work / f"eval-{task}-{which}"
            seconds = ecombot("evaluate", "--adapter", str(work / run), *flags, "--output", str(output), log=log)
            result = json.loads((output / "results.json").read_text())
            (system,) = result["systems"].values()
            scores.setdefault(task, {})[which] = {**system, "evaluate_seconds": round(seconds, 1),
                                                  "scored": result.get("test_size") or result.get("products")
                                                  or result.get("requests")}
    return scores


def model_flag(args) -> list[str]:
    return ["--model", args.model] if args.model else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="each task's run; the multi-task run gets 3x")
    parser.add_argument("--catalog", default="builtin")
    parser.add_argument("--data", help="support data (default: the built-in conversations)")
    parser.add_argument("--model", help="base model (default: gemma-3-270m)")
    parser.add_argument("--max-new-tokens", type=int, help="every evaluation's answer limit (default: each fits its "
                                                           "answers; recommend 120)")
    parser.add_argument("--support-limit", type=int, default=32)
    parser.add_argument("--recommend-limit", type=int, default=64)
    parser.add_argument("--work", default="/tmp/ecombot-multitask", help="run and evaluation folders, command log")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "multitask.json"))
    args = parser.parse_args()

    from ecombot.evaluate.tasks import estimate_cell

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    runs = train_runs(args, work, log)
    scores = evaluations(args, work, log)
    rows = [[title, estimate_cell(scores[task]["own"].get(metric), scale),
             estimate_cell(scores[task]["multi"].get(metric), scale)]
            for task, metric, title, scale in MEASURES]
    rows += [["training time (s)", f"{sum(runs[t]['train_seconds'] for t in ('support', 'copy', 'recommend')):.0f} "
              "(three runs)", f"{runs['multi']['train_seconds']:.0f}"],
             ["best validation loss (step)", ", ".join(f"{runs[t]['best_val_loss']:.3f} ({runs[t]['best_step']})"
                                                       for t in ("support", "copy", "recommend")),
              f"{runs['multi']['best_val_loss']:.3f} ({runs['multi']['best_step']})"]]
    print_table(["measure", "one adapter per task", "one multi-task adapter"], rows)
    write_results(args.output, {"machine": machine(), "args": vars(args), "runs": runs, "scores": scores,
                                "table": rows})


if __name__ == "__main__":
    main()
