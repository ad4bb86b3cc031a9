"""Batched generation as `ecombot evaluate` and a busy `ecombot serve` run it, with the output head in both layouts.

The engine behind chat, serve and evaluate (TransformersEngine) answers the built-in set's held-out questions in
batches of each --batch-sizes, once with the head as F.linear's `x @ Wᵀ` and once weight-major (`W @ xᵀ`, what
speedups/head.py picks for a few fp32 rows on the CPUs where it was measured faster; forced here for every batch of
2-64 rows, whatever the CPU), alternating per repeat so both see the same machine. Reports generated tokens per second
of each layout and their ratio per repeat, and whether both gave the same answers.

    python benchmarks/batched_decode.py --adapter runs/quickstart --precision fp32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, print_table, spread, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--adapter", help="run directory of an adapter (default: the base model)")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"],
                        help="the weights' precision; the weight-major head is for fp32 only")
    parser.add_argument("--output", default="benchmarks/results/batched_decode.json")
    args = parser.parse_args()

    from ecombot.chat import Decoding, TransformersEngine
    from ecombot.data import builtin_path, prepare
    from ecombot.models import load_for_inference
    from ecombot.speedups import head

    loaded = load_for_inference(model=args.model, adapter=args.adapter, precision=args.precision)
    engine = TransformersEngine(loaded, None, Decoding(max_new_tokens=args.max_new_tokens))
    engine.speed_up_decoding()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    test = prepare(builtin_path(), 0.1, 0.1, 42).split.test
    if args.repeats * max(sizes) > len(test):
        parser.error(f"--repeats x the largest batch must be at most the {len(test)} held-out questions")
    forced = (2, 64)  # the rows computed weight-major in the "W @ xt" runs, whatever this CPU's own rule says
    layouts = {"x @ Wt": None, "W @ xt": forced}
    measured_rows = head.weight_major_rows
    engine.generate([[{"role": "user", "content": "Hello"}]])  # warm-up, not counted
    runs: dict[int, dict[str, list[dict]]] = {b: {name: [] for name in layouts} for b in sizes}
    for repeat in range(args.repeats):
        for b in sizes:
            batch = [c.messages[:1] for c in test[repeat * b:(repeat + 1) * b]]
            order = list(layouts) if repeat % 2 == 0 else list(reversed(layouts))
            for name in order:
                head.weight_major_rows = lambda span=layouts[name]: span
                started = time.perf_counter()
                answers = engine.generate(batch)
                seconds = time.perf_counter() - started
                tokens = sum(a.new_tokens for a in answers)
                runs[b][name].append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                                      "texts": [a.text for a in answers]})
    head.weight_major_rows = measured_rows
    summary = {}
    for b, by_layout in runs.items():
        plain, major = by_layout["x @ Wt"], by_layout["W @ xt"]
        summary[b] = {"x @ Wt": spread([r["tokens_per_s"] for r in plain]),
                      "W @ xt": spread([r["tokens_per_s"] for r in major]),
                      "ratio": spread([m["tokens_per_s"] / p["tokens_per_s"] for p, m in zip(plain, major)]),
                      "weight_major": forced[0] <= b <= forced[1] and loaded.precision == "fp32",
                      "same_answers": all(p["texts"] == m["texts"] for p, m in zip(plain, major))}
    print(f"\n{loaded.precision}, up to {args.max_new_tokens} new tokens, {args.repeats} repeats: "
          f"tokens/s median [min-max]")
    print_table(["batch", "x @ Wt (F.linear)", "W @ xt (weight-major)", "speed-up", "same answers"],
                [[str(b), fmt(s["x @ Wt"]), fmt(s["W @ xt"]), fmt(s["ratio"], 2) + "x", str(s["same_answers"])]
                 for b, s in summary.items()])
    write_results(args.output, {"machine": machine(), "model": args.model, "adapter": args.adapter,
                                "precision": loaded.precision, "max_new_tokens": args.max_new_tokens,
                                "summary": summary, "runs": runs})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
