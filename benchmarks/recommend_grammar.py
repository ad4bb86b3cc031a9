"""Constrained decoding against choosing among candidates, for recommendations: which keeps answers right?

One recommend run's held-out requests, answered by the base model (shown k solved requests) and the adapter under
each grammar, side by side in one process (`ecombot evaluate --task recommend --grammar G` for each G):
  candidates  the answer may name only the request's 8 candidates (the default of evaluate and serve)
  catalog     the answer may name any product of the catalog: constrained decoding without choosing among
              candidates (the prompt still shows them: the model was trained with them)
  none        free decoding; lines that name no candidate are dropped (choosing among candidates alone)
The search baseline is scored once (it decodes nothing).

    python benchmarks/recommend_grammar.py --adapter runs/recommend --limit 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="a --task recommend run directory")
    parser.add_argument("--limit", type=int, default=64, help="held-out requests scored")
    parser.add_argument("--grammars", default="candidates,catalog,none")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "recommend_grammar.json"))
    args = parser.parse_args()

    from ecombot.config import EvalConfig
    from ecombot.evaluate.recommend import evaluate_recommend
    from ecombot.evaluate.tasks import estimate_cell

    rows, results, search = [], {"machine": machine(), "args": vars(args), "grammars": {}}, []
    with tempfile.TemporaryDirectory() as scratch:
        for i, grammar in enumerate(args.grammars.split(",")):
            systems = ("search", "base-fewshot", "finetuned") if i == 0 else ("base-fewshot", "finetuned")
            cfg = EvalConfig(adapters=[args.adapter], systems=systems, limit=args.limit, grammar=grammar,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             output=str(Path(scratch) / grammar))
            started = time.perf_counter()
            result = evaluate_recommend(cfg)
            result["seconds"] = round(time.perf_counter() - started, 1)
            results["grammars"][grammar] = result
            predictions = [json.loads(line) for line in (Path(cfg.output) / "predictions.jsonl").open()]
            search = search or [p["search"] for p in predictions]
            for name, s in result["systems"].items():
                # the search's own top 3, in its order: an adapter that copies the first candidates, not one that checks
                s["same_as_search"] = sum((p[name] if name == "search" else p[name]["skus"]) == found
                                          for p, found in zip(predictions, search))
                met = s["constraints_met_per_request"]
                rows.append([name if name == "search" else f"{name} ({grammar})", f"{s['sku_exists']:.1%}"
                             if s["sku_exists"] is not None else "-",
                             estimate_cell(met, 100),
                             f"{s['hit_at_1']:.1%}", f"{s['hit_at_k']:.1%}", f"{s['returned_per_request']:.2f}",
                             str(s["empty"]), str(s["dropped_skus"]), str(s["same_as_search"]),
                             f"{s['seconds']:.0f}" if "seconds" in s else "-"])
    print_table(["system (grammar)", "SKUs exist", "constraints met", "hit@1", "hit@3", "returned", "none",
                 "dropped lines", "= search's 3", "answer s"], rows)
    write_results(args.output, results)


if __name__ == "__main__":
    main()
