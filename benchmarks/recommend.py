"""Recommendations from the built-in catalog: what the plain search baseline gets right, the bar a model must clear.

Requests are generated from the catalog with known answers (catalog/requests.py: a category and one to three of
material, colour, size and a budget, phrased as a customer would). For each system's top k products: every SKU
exists in the catalog; constraint satisfaction (the share of returned products meeting every stated constraint, and
per constraint); hit@1 and hit@k (the first, or any, returned product is a known answer). Systems so far:
  search     hybrid BM25 + MiniLM search over title, category and attributes, filtered by the stated budget
  category   the k cheapest products of the request's category within its budget: what a shop's category page
             sorted by price gives, a floor that knows the category for free

    python benchmarks/recommend.py --requests 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "recommend.json"))
    args = parser.parse_args()

    from ecombot.catalog import CatalogSearch, builtin_catalog_path, price_limit, read_catalog, recommendation_requests
    from ecombot.catalog.requests import score_recommendations

    products = read_catalog(builtin_catalog_path())
    requests = recommendation_requests(products, args.requests, args.seed)
    started = time.perf_counter()
    search = CatalogSearch(products)
    found = search.recommend([r.text for r in requests], args.k)
    search_seconds = time.perf_counter() - started
    systems = {"search": [[rec.sku for rec in recs] for recs in found]}
    categories = sorted({p.category for p in products}, key=len, reverse=True)
    floor = []
    for request in requests:  # the category named in the request (longest name first), cheapest first
        category = next((c for c in categories if c in request.text.lower()), None)
        limit = price_limit(request.text)
        pool = sorted((p for p in products if p.category == category and (limit is None or p.price <= limit)),
                      key=lambda p: p.price)
        floor.append([p.sku for p in pool[:args.k]])
    systems["category"] = floor
    results = {"machine": machine(), "args": vars(args), "products": len(products), "requests": len(requests),
               "mean_answers": sum(len(r.answers) for r in requests) / len(requests),
               # constraints met can reach 100% only where a request has k right products
               "constraints_met_ceiling": sum(min(args.k, len(r.answers)) for r in requests) / (args.k * len(requests)),
               "search_seconds_per_request": search_seconds / len(requests),
               "systems": {name: score_recommendations(requests, returned, products, args.k) for name, returned in systems.items()}}
    print(f"{len(requests)} requests over {len(products)} products ({results['mean_answers']:.1f} right products "
          f"per request on average), top {args.k}; at most {results['constraints_met_ceiling']:.1%} of the returned "
          "products can meet every constraint (some requests have fewer right products than places)")
    print_table(["system", "SKUs exist", "constraints met", "category", "material", "colour", "size", "budget",
                 "hit@1", f"hit@{args.k}"],
                [[name, f"{s['sku_exists']:.0%}", f"{s['constraints_met']:.1%}"]
                 + [f"{s['per_constraint'].get(c, 0):.1%}" for c in ("category", "material", "colour", "size",
                                                                      "max_price")]
                 + [f"{s['hit_at_1']:.1%}", f"{s['hit_at_k']:.1%}"] for name, s in results["systems"].items()])
    write_results(args.output, results)


if __name__ == "__main__":
    main()
