"""Recommendation requests generated from a catalog, each with its known answers: the SKUs that meet every
constraint the customer states. A recommender is scored on them (evaluation, benchmarks/recommend.py): how often
what it returns meets the constraints, and whether it finds an answer at all."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ecombot.catalog.product import Product

CONSTRAINTS = ("category", "material", "colour", "size", "max_price")
SIZE_WORDS = ("small", "large")  # said before the noun ("a small side table"); other sizes after it ("a rug, 5 x 8 ft")


@dataclass(frozen=True)
class Request:
    """A customer's request, the constraints it states (category always; material, colour, size, max_price when
    said) and the SKUs of the catalog that meet all of them."""

    text: str
    constraints: dict
    answers: frozenset[str]


def meets(product: Product, constraints: dict) -> dict[str, bool]:
    """Each stated constraint: does the product meet it?"""
    out = {}
    for name, wanted in constraints.items():
        if name == "max_price":
            out[name] = product.price <= wanted
        elif name == "category":
            out[name] = product.category == wanted
        else:
            out[name] = product.attribute(name).lower() == str(wanted).lower()
    return out


def _price_cap(price: float, rng: random.Random) -> int:
    """A round budget above the product's price, as a customer says one: "under $200"."""
    step = 10 if price < 100 else 25 if price < 300 else 50
    return int(math.ceil(price / step) * step) + step * rng.choice((0, 0, 1))


def _text(constraints: dict, rng: random.Random) -> str:
    size = constraints.get("size", "")
    words = [w for w in (size if size in SIZE_WORDS else "", constraints.get("colour", ""),
                         constraints.get("material", ""), constraints["category"]) if w]
    thing = " ".join(words) + (f", {size}," if size and size not in SIZE_WORDS else "")
    budget = f" under ${constraints['max_price']}" if "max_price" in constraints else ""
    article = "" if constraints["category"].endswith("s") else "a "  # "curtains", "dinner plates"
    opening = rng.choice(("I'm looking for {a}{x}{b}", "Can you recommend {a}{x}{b}?", "Do you have {a}{x}{b}?",
                          "I need {a}{x}{b}", "Any suggestions for {a}{x}{b}?", "Show me {a}{x}{b}"))
    return opening.format(a=article, x=thing, b=budget).replace(",?", "?").replace(", under", " under").rstrip(",")


def recommendation_requests(products: list[Product], count: int, seed: int = 0) -> list[Request]:
    """`count` requests, each built around a random product: its category and a random subset of its material,
    colour, size and a budget above its price (at least one besides the category), so at least that product
    answers it; the answers are every product meeting the same constraints."""
    rng = random.Random(seed)
    sizes: dict[str, set[str]] = {}
    for product in products:
        sizes.setdefault(product.category, set()).add(product.attribute("size"))
    requests, seen = [], set()
    attempts = 0
    while len(requests) < count and attempts < count * 20:
        attempts += 1
        target = rng.choice(products)
        stated = [n for n in ("material", "colour") if target.attribute(n)] + ["max_price"]
        if target.attribute("size") and len(sizes[target.category]) > 1:  # one size only: nobody asks for it
            stated.append("size")
        chosen = rng.sample(stated, rng.randint(1, min(3, len(stated))))
        constraints = {"category": target.category}
        for name in chosen:
            constraints[name] = _price_cap(target.price, rng) if name == "max_price" else target.attribute(name)
        key = tuple(sorted(constraints.items()))
        if key in seen:
            continue
        seen.add(key)
        answers = frozenset(p.sku for p in products if all(meets(p, constraints).values()))
        requests.append(Request(_text(constraints, rng), constraints, answers))
    return requests


def score_recommendations(requests: list[Request], returned: list[list[str]], products: list[Product],
                          k: int) -> dict:
    """What a recommender's top-k lists get right: every SKU exists; the share of returned products meeting every
    stated constraint (and each one); hit@1 and hit@k (the first, or any, is a known answer); empty lists."""
    by_sku = {p.sku: p for p in products}
    exists = [sku in by_sku for skus in returned for sku in skus]
    met, per = [], {name: [] for name in CONSTRAINTS}
    for request, skus in zip(requests, returned):
        for sku in skus[:k]:
            if sku not in by_sku:
                met.append(False)
                continue
            checks = meets(by_sku[sku], request.constraints)
            met.append(all(checks.values()))
            for name, ok in checks.items():
                per[name].append(ok)

    def mean(values: list) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {"sku_exists": mean(exists), "constraints_met": mean(met),
            "per_constraint": {name: mean(v) for name, v in per.items() if v},
            "hit_at_1": mean([bool(s) and s[0] in r.answers for r, s in zip(requests, returned)]),
            "hit_at_k": mean([any(x in r.answers for x in s[:k]) for r, s in zip(requests, returned)]),
            "empty": sum(not s for s in returned), "returned_per_request": mean([len(s[:k]) for s in returned])}


def per_request_scores(requests: list[Request], returned: list[list[str]], products: list[Product],
                       k: int) -> dict[str, list]:
    """Per request, for intervals over requests: the share of its returned products meeting every constraint (None
    when it returned none), and whether its first / any returned product is a known answer."""
    by_sku = {p.sku: p for p in products}
    met = []
    for request, skus in zip(requests, returned):
        checks = [sku in by_sku and all(meets(by_sku[sku], request.constraints).values()) for sku in skus[:k]]
        met.append(sum(checks) / len(checks) if checks else None)
    return {"constraints_met": met,
            "hit_at_1": [bool(s) and s[0] in r.answers for r, s in zip(requests, returned)],
            "hit_at_k": [any(x in r.answers for x in s[:k]) for r, s in zip(requests, returned)]}
