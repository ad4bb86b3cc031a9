"""Support questions about products, answered from the catalog: a grounded support adapter with the knowledge base it
trained with, and with the store's catalog added to that base (`ecombot knowledge add --catalog FILE`) unless it
trained with it (`ecombot train --catalog FILE`: then only about products it was never asked about in training).

Questions are generated from the catalog with known answers, one per kind per product, phrased as a customer would:
its dimensions, its material, its care, its price; in the first of the ways training asks them, or (`--wording
own`) in wordings training never uses, the title in lower case. An answer is right when it states the product's value (the
price as 110.99, the care instruction's first clause); a handoff or any other answer is wrong. The catalog copy
of the knowledge base is made under a new name in the same database and left there.

    python benchmarks/product_questions.py --adapter runs/quickstart --catalog builtin --products 24
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RIGHT = {"care": lambda care: care.split(";")[0].rstrip(".")}  # the care instruction's first clause suffices
# --wording own: questions written apart from the trained ways of asking (catalog/questions.py KINDS), in the
# looser shape a customer types them (lower case, the title run into the sentence, no question word, a yes/no
# question the answer has to turn into the value); one per product and kind, taken in turn
OWN_WORDING = {
    "dimensions": ("will the {title} fit in a small flat? what are its measurements", "{title} size in cm please",
                   "how wide and how tall is the {title}"),
    "material": ("what's the {title} actually made out of?", "is the {title} real wood or something else?",
                 "{title} - which material?"),
    "care": ("can i just throw the {title} in the wash?", "any tips on keeping the {title} clean",
             "how do you take care of the {title}"),
    "price": ("what does the {title} go for?", "{title} price?", "how much would the {title} set me back"),
}


def normalised(text: str) -> str:
    return " ".join(text.lower().replace("×", "x").split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="Run directory of a grounded support adapter.")
    parser.add_argument("--catalog", default="builtin")
    parser.add_argument("--products", type=int, default=24, help="Products asked about (4 questions each).")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wording", choices=("trained", "own"), default="trained", help="trained: the first of "
                        "the ways training asks each kind; own: customer wordings training never uses (OWN_WORDING).")
    parser.add_argument("--unseen-by", nargs="*", default=[], help="Other runs whose trained product questions also "
                        "rule products out: two adapters compared on the same products.")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "product_questions.json"))
    args = parser.parse_args()

    from ecombot.catalog import read_catalog
    from ecombot.catalog.knowledge import catalog_passages
    from ecombot.catalog.questions import KINDS, PRODUCT_QUESTIONS
    from ecombot.chat import Decoding, open_engine
    from ecombot.data import read_file
    from ecombot.knowledge import KnowledgeBase, is_handoff, open_grounder
    from ecombot.run_dir import RunDir

    recorded = RunDir(args.adapter).knowledge()
    if not recorded:
        sys.exit(f"{args.adapter} trained without a knowledge base: this compares grounded answers")
    # never a product the run (or --unseen-by's) trained a question about (support with --catalog)
    trained_on = " ".join(c.question for run in [args.adapter, *args.unseen_by]
                          for c in read_file(RunDir(run).data_dir / "train.jsonl").conversations
                          if c.category == PRODUCT_QUESTIONS)
    products = [p for p in read_catalog(args.catalog)
                if all(value(p) for _, _, value in KINDS.values()) and f" {p.title}" not in trained_on]
    products = random.Random(args.seed).sample(products, min(args.products, len(products)))
    items = [(kind, p, (asks[0].format(title=p.title) if args.wording == "trained"
                        else OWN_WORDING[kind][n % len(OWN_WORDING[kind])].format(title=p.title.lower())),
              RIGHT.get(kind, str)(value(p)))
             for n, p in enumerate(products) for kind, (asks, _, value) in KINDS.items()]

    trained = KnowledgeBase(recorded["db"], recorded["name"])
    bases = {"trained knowledge base": trained}
    source, catalog = catalog_passages(args.catalog)
    kinds = {s.name: s.kind for s in trained.sources()}
    if source not in recorded["sources"]:  # a run trained without the catalog: also answer with it added
        with_catalog = KnowledgeBase(recorded["db"], f"{recorded['name']}+catalog")
        started = time.perf_counter()
        passages = trained.passages()
        for name in kinds:
            with_catalog.add_passages(name, [p for p in passages if p.source == name], kinds[name])
        with_catalog.add_passages(source, catalog, kind="document")
        print(f"knowledge base {with_catalog.name!r}: {len(with_catalog.passages())} passages "
              f"({time.perf_counter() - started:.0f} s to build)")
        bases["+ catalog"] = with_catalog

    engine = open_engine(None, [("adapter", Path(args.adapter))], Decoding(max_new_tokens=args.max_new_tokens),
                         max_batch=32)
    systems = {}
    rows = [{"kind": kind, "sku": p.sku, "question": q, "value": v} for kind, p, q, v in items]
    for label, base in bases.items():
        grounder = open_grounder(base.name, recorded["db"], recorded.get("k", 3), recorded.get("handoff"))
        groundings = grounder.ground_many([[{"role": "user", "content": q}] for _, _, q, _ in items])
        asked = [i for i, g in enumerate(groundings) if g.covered]
        answers = [grounder.handoff] * len(items)
        started = time.perf_counter()
        for start in range(0, len(asked), 32):
            batch = asked[start:start + 32]
            for i, generation in zip(batch, engine.generate([groundings[i].messages for i in batch], "adapter")):
                answers[i] = generation.text
        seconds = time.perf_counter() - started
        right = [normalised(v) in normalised(a) for (_, _, _, v), a in zip(items, answers)]
        own = [any(h.passage.heading.endswith(p.title) for h in g.hits) for (_, p, _, _), g in zip(items, groundings)]
        systems[label] = {
            "right": sum(right) / len(items),
            "per_kind": {kind: sum(r for (k, *_), r in zip(items, right) if k == kind) / len(products)
                         for kind in KINDS},
            "handed_over": sum(not g.covered or is_handoff(a, grounder.handoff) for g, a in zip(groundings, answers))
            / len(items),
            "product_passage_shown": sum(own) / len(items), "generate_seconds": round(seconds, 1)}
        for row, answer, ok in zip(rows, answers, right):
            row[label] = {"answer": answer, "right": ok}
    results = {"machine": machine(), "args": vars(args), "questions": len(items), "systems": systems,
               "examples": rows[:8]}
    print_table(["knowledge", "right", *KINDS, "handed over", "own product's passage shown"],
                [[name, f"{s['right']:.0%}", *(f"{s['per_kind'][k]:.0%}" for k in KINDS),
                  f"{s['handed_over']:.0%}", f"{s['product_passage_shown']:.0%}"] for name, s in systems.items()])
    write_results(args.output, results)


if __name__ == "__main__":
    main()
