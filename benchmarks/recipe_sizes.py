"""The training recipe on several data sizes, with the defaults a user gets: does the size rule
(config/train.py fit_to_data) give an adapter that beats the base model, and a grounded bot that beats retrieval,
on 50 conversations as on thousands?

For each size: a seeded, intent-stratified sample of the built-in training split is written to a file, and
`ecombot train --data FILE` runs with the defaults (grounded in a knowledge base holding the built-in policy; the
file is split into train/validation/test as a user's would be). Then every system answers the same questions: the
built-in test split (never in any sample), scored as `ecombot evaluate` scores them.

    python benchmarks/recipe_sizes.py --sizes 63,200,1000 --eval-items 40
    python benchmarks/recipe_sizes.py --sizes 63,200 --ungrounded-shares 0,0.1   # that training share, side by side
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402

SYSTEMS = ("base", "retrieval", "finetuned", "grounded")
METRICS = ("semantic", "intent_accuracy", "rouge_l", "fact_accuracy", "invented_fact_rate", "false_handoffs")


def stratified(convs, n: int, seed: int):
    """n conversations, as even over intents as n allows (a store's FAQ covers each topic a few times at most)."""
    rng = random.Random(seed)
    by_intent: dict[str, list] = {}
    for conv in convs:
        by_intent.setdefault(conv.intent, []).append(conv)
    for members in by_intent.values():
        rng.shuffle(members)
    picked, round_ = [], 0
    while len(picked) < n and any(len(m) > round_ for m in by_intent.values()):
        picked += [m[round_] for m in by_intent.values() if len(m) > round_][: n - len(picked)]
        round_ += 1
    return picked


def one_size(n: int, split, work: Path, args, ungrounded_share: float | None = None) -> dict:
    from ecombot.config import load_config
    from ecombot.data.builtin import policy_path
    from ecombot.evaluate import EvalConfig, run_evaluation
    from ecombot.knowledge import KnowledgeBase
    from ecombot.train import train

    data = work / f"sample-{n}.jsonl"
    data.write_text("".join(json.dumps(c.to_json()) + "\n" for c in stratified(split.train, n, args.seed)))
    test = work / "builtin-test.jsonl"
    test.write_text("".join(json.dumps(c.to_json()) + "\n" for c in split.test[: args.eval_items]))
    tag = f"{n}" if ungrounded_share is None else f"{n}-plain{ungrounded_share}"
    db = f"sqlite:///{work / f'knowledge-{tag}.db'}"
    KnowledgeBase(db, "store").add_files([policy_path()])
    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    if ungrounded_share is not None:
        overrides["ungrounded_share"] = ungrounded_share
    cfg = load_config(None, data=str(data), output=str(work / f"run-{tag}"), knowledge="store", db=db,
                      model=args.model, **overrides)
    started = time.time()
    result = train(cfg, show_progress=False)
    info = json.loads((result.run.path / "run_config.json").read_text())
    evaluation = run_evaluation(EvalConfig(test=str(test), data=str(data), adapters=[str(result.run.path)],
                                           systems=SYSTEMS, output=str(work / f"eval-{tag}"), max_new_tokens=100,
                                           slices=False), None)
    name = result.run.name
    labels = {"base": "base", "retrieval": "retrieval", name: "finetuned", f"{name}+knowledge": "grounded"}
    scores = {labels[system]: {m: (getattr(s, m).value if getattr(s, m) else None) for m in METRICS}
              for system, s in evaluation.systems.items() if system in labels}
    return {"conversations": n, "ungrounded_share": cfg.ungrounded_share, "train_split": result.split["train"],
            "recipe": info["recipe"], "steps": result.steps,
            "best_step": result.best_step, "stopped_early": result.stopped_early, "train_s": result.train_seconds,
            "total_s": round(time.time() - started, 1), "tokens_per_s": result.tokens_per_s, "systems": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="63,200,1000")
    parser.add_argument("--eval-items", type=int, default=40, help="Built-in test questions every system answers.")
    parser.add_argument("--max-steps", type=int, default=None, help="Cap every run (short form; not the rule).")
    parser.add_argument("--ungrounded-shares", default=None,
                        help="Comma-separated ungrounded_share values, each size trained once per value (default: "
                             "the config's).")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "recipe_sizes.json"))
    args = parser.parse_args()
    from ecombot.data import prepare

    info = machine()
    print(f"CPU: {info['cpu']} ({info['cores']} cores, {info['cpu_class']})")
    split = prepare(None, 0.1, 0.1, args.seed).split
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shares = [float(s) for s in args.ungrounded_shares.split(",")] if args.ungrounded_shares else [None]
        for n in (int(s) for s in args.sizes.split(",")):
            for share in shares:
                rows.append(one_size(n, split, Path(tmp), args, share))
                print(f"{n} (ungrounded_share {rows[-1]['ungrounded_share']}): {rows[-1]['recipe']}; "
                      f"{rows[-1]['steps']} steps in {rows[-1]['train_s']:.0f} s", flush=True)
                write_results(args.output, {"machine": info, "args": vars(args), "sizes": rows})
    fmt = lambda v: "–" if v is None else f"{v:.2f}"
    print_table(["conversations", "ungrounded share", "steps (best)", "train s"]
                + [f"{s} sem / intent / facts / handoffs" for s in SYSTEMS],
                [[str(r["conversations"]), str(r["ungrounded_share"]), f"{r['steps']} ({r['best_step']})",
                  f"{r['train_s']:.0f}"]
                 + [" / ".join(fmt(r["systems"][s][m]) for m in ("semantic", "intent_accuracy", "fact_accuracy",
                                                                  "false_handoffs")) for s in SYSTEMS] for r in rows])


if __name__ == "__main__":
    main()
