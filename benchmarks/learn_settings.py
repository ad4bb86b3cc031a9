"""Round 1 of learn_rounds.py from one base adapter under several `ecombot learn` recipes: how much of the round's
feedback each version learns (its slice), how much of the rest it keeps (the guard: greedy intent and facts as in
learn_rounds.py, and loss), what the promotion rule said and what the round cost. learn/loop.py's Recipe defaults
are chosen from this table.

    python benchmarks/learn_settings.py --recipes 4,3,0.5,0 2,9,0.25,0 2,9,0.5,0.1
    # passes, replayed per feedback item, lr share[, L2 pull toward the parent's weights]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402
from learn_rounds import (Scorer, build_rounds, copy_base, guard_questions, parse_recipe,  # noqa: E402
                          record_feedback, train_from_scratch)

PLANNED_ROUNDS = 5  # the guard leaves out every value learn_rounds.py's five rounds change, as it does there


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["2,9,0.5,0", "2,9,0.5"],
                        help="passes,replayed conversations per feedback item,share of the first training's lr"
                             "[,L2 pull toward the parent's weights (default: learn's own, Recipe.parent_l2)]")
    parser.add_argument("--base", help="The run to learn from (its test split is the guard); default: one trained "
                                       "here on learn_rounds.py's base data with --base-steps.")
    parser.add_argument("--base-steps", type=int, default=0, help="0: the default recipe's steps.")
    parser.add_argument("--per-topic", type=int, default=16)
    parser.add_argument("--per-edit", type=int, default=8)
    parser.add_argument("--slice-extra", type=int, default=12)
    parser.add_argument("--guard", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="benchmarks/results/learn_settings.json")
    args = parser.parse_args()

    from ecombot.data import builtin_path, clean, read_file
    from ecombot.learn import learn
    from ecombot.serve.store import Store

    convs, _ = clean(read_file(builtin_path()))
    base_convs, plan, _ = build_rounds(convs, PLANNED_ROUNDS, args.per_topic, args.per_edit, args.slice_extra,
                                      args.seed)
    work = Path(tempfile.mkdtemp(prefix="ecombot-learn-settings-"))
    base = Path(args.base) if args.base else work / "base"
    base_seconds = None
    if not args.base:
        started = time.time()
        train_from_scratch(args, base_convs, work / "base.jsonl", base)
        base_seconds = round(time.time() - started, 1)
    guard = guard_questions(base, plan, args.guard)
    scorer = Scorer(convs + [c for r in plan for c in r["feedback"] + r["extra"]], args.max_new_tokens)
    results = {"machine": machine(), "args": vars(args),
               "base": {"seconds": base_seconds, "guard": scorer(base, guard)}, "recipes": []}
    rows, before = [], {}  # the base's scores on a slice: every recipe holds out the same items
    for spec in args.recipes:
        recipe = parse_recipe(spec)
        run = work / spec.replace(",", "-") / "bot"
        copy_base(base, run)
        db = f"sqlite:///{run.parent / 'store.db'}"
        ids = record_feedback(Store(db), "bot", "v1", plan[0]["feedback"], plan[0]["edit"])
        started = time.time()
        learned = learn(run, db=db, served_as="bot", say=lambda _: None, recipe=recipe)
        seconds = round(time.time() - started, 1)
        slice_items = [ids[i] for i in learned.feedback.held_out_ids] + plan[0]["extra"]
        asked = tuple(c.question for c in slice_items)
        if asked not in before:
            before[asked] = scorer(base, slice_items)
        candidate = run / "versions" / learned.version
        got = {"recipe": dataclasses.asdict(recipe), "seconds": seconds,
               "train_seconds": learned.record["train_seconds"], "steps": learned.record["steps"],
               "replayed": learned.record["replayed"], "passes": learned.record["passes"],
               "learning_rate": learned.record["learning_rate"],
               "promoted": learned.promoted, "reason": learned.reason,
               "slice_before": before[asked], "slice_after": scorer(candidate, slice_items),
               "guard": scorer(candidate, guard)}
        results["recipes"].append(got)
        write_results(args.output, results)
        rows.append([spec, str(got["steps"]), f"{seconds:.0f} s", "yes" if got["promoted"] else "no",
                     f"{got['slice_before']['intent']:.2f} -> {got['slice_after']['intent']:.2f}",
                     f"{got['slice_before']['fact']} -> {got['slice_after']['fact']}",
                     f"{got['guard']['intent']:.2f} / {got['guard']['fact']} / {got['guard']['loss']:.4f}"])
    kept = results["base"]["guard"]
    print(f"base guard intent / facts / loss: {kept['intent']:.2f} / {kept['fact']} / {kept['loss']:.4f}"
          + (f"; base training {base_seconds:.0f} s" if base_seconds else ""))
    print_table(["passes,replay,lr[,l2]", "steps", "round", "promoted", "slice intent", "slice facts",
                 "guard intent / facts / loss"], rows)


if __name__ == "__main__":
    main()
