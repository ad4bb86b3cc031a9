"""The recommendation task, by choosing among retrieved candidates: the catalog search finds the products nearest to
the request within its budget, the model reads them and answers with the SKUs that meet the request, each with a
one-line reason. Every SKU the model can name is in its prompt, and `parse_recommendations` keeps only those, so a
recommendation never names a product that does not exist (any other SKU-like text is counted, not shown).

Training data: requests generated from the catalog (catalog/requests.py) with their candidates; the target lists
the candidates meeting every stated constraint, in search order, at most MAX_PICKS, or says none does."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ecombot import atomic
from ecombot.catalog.product import Product
from ecombot.catalog.requests import Request, meets, recommendation_requests
from ecombot.catalog.search import CatalogSearch, reason
from ecombot.data import Conversation, conversations_jsonl

CANDIDATES = 8
MAX_PICKS = 3
REQUESTS_PER_PRODUCT = 4
MAX_REQUESTS = 2000
REQUEST_HEADER = "Customer request:"
NONE_MATCH = "None of our products matches every part of that request."
# Why not support's 1.1: answer lines naming products share most of their tokens (SKU prefix, material, "$"), so
# the penalty cut every answer of the 80-step adapter at two lines (64 of 64 held-out requests); at 1.0 it wrote 3.
REPETITION_PENALTY = 1.0
# What an answer may name, by constrained decoding (`answer_grammar`): "candidates" (the products the prompt shows),
# "catalog" (any product of the catalog) or "none" (free text; `parse_recommendations` keeps the candidates named).
GRAMMARS = ("candidates", "catalog", "none")
GRAMMAR = "candidates"
REASON_SLACK = 20  # characters a reason may add to its products' longest (reason_limit)


def candidate_line(product: Product) -> str:
    details = [f"{name} {value}" for name, value in product.attributes.items()
               if name in ("material", "colour", "size")]
    return f"{product.sku} | {product.title} | {product.category} | {', '.join(details)} | ${product.price:.2f}"


def recommend_prompt(text: str, candidates: list[Product]) -> str:
    lines = ["Recommend products for this request, from these candidates only:"]
    lines += [candidate_line(p) for p in candidates]
    return "\n".join(lines + ["", f"{REQUEST_HEADER} {text}"])


def recommend_answer(request: Request, candidates: list[Product]) -> str:
    picks = [p for p in candidates if all(meets(p, request.constraints).values())][:MAX_PICKS]
    return "\n".join(f"{p.sku}: {reason(p)}" for p in picks) if picks else NONE_MATCH


def lark_literal(text: str) -> str:
    """`text` as a Lark string literal: quotes and backslashes escaped, and every character that is not printable
    (a tab, a NUL in a SKU) as \\uXXXX, which llguidance's lexer refuses to read raw."""
    escaped = ("\\" + c if c in '"\\' else c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return '"' + "".join(escaped) + '"'


def answer_grammar(skus: list[str], reason_chars: int) -> str:
    """The Lark grammar of an answer naming only `skus`: one to MAX_PICKS lines "SKU: reason", or NONE_MATCH, a reason
    at most `reason_chars` characters. A model decoding with it cannot name a product outside `skus`, misspell one,
    write a line the reply drops, or run one reason on until the token limit cuts the answer."""
    lines = f'line ("\\n" line)~0..{MAX_PICKS - 1} | ' if skus else ""
    return (f"start: {lines}{lark_literal(NONE_MATCH)}\n"
            + (f'line: SKU ": " REASON\nSKU: {" | ".join(map(lark_literal, skus))}\n'
               f'REASON: /[^\\n\\r]{{1,{reason_chars}}}/\n' if skus else ""))


def reason_limit(products: list[Product]) -> int:
    """How long a reason may run: REASON_SLACK more than the longest reason these products have in the training
    targets (`reason`). The untrained base model, free to write a line of any length, ran into the token limit on
    66% of its answers (benchmarks/recommend_grammar.py); an adapter writes its products' own reasons."""
    return max((len(reason(p)) for p in products), default=0) + REASON_SLACK


def nameable(mode: str, candidates: list[list[Product]], products: list[Product]) -> list[list[Product]]:
    """What each request's answer may name under `mode` (GRAMMARS): the whole catalog, else its candidates."""
    return [products] * len(candidates) if mode == "catalog" else candidates


def answer_grammars(mode: str, candidates: list[list[Product]], products: list[Product]) -> list[str | None] | None:
    """Each request's grammar for `mode` (GRAMMARS): naming only what `nameable` gives, or none (free decoding)."""
    if mode == "none":
        return None
    lists = nameable(mode, candidates, products)
    grammars = {id(names): answer_grammar([p.sku for p in names], reason_limit(names))  # the catalog's: once
                for names in {id(names): names for names in lists}.values()}
    return [grammars[id(names)] for names in lists]


@dataclass
class Parsed:
    skus: list[str]  # candidates named, in order, each once
    dropped: int  # SKU-like words that are not candidates (never shown to the customer)
    lines: list[str]  # the answer's line naming each of `skus` (what a customer is shown)


# One word with a digit before the colon: what a line naming a product starts with ("HP-01002", "AB/12"; not "Note")
SKU_LIKE = re.compile(r"(?=[^\s:]*\d)[^\s:]{2,40}")


def parse_recommendations(answer: str, candidates: list[Product]) -> Parsed:
    """The candidate SKUs an answer's lines start with, before a colon (any SKU spelling: "OAK-TABLE", "AB/12",
    "AB:12"); other one-word line heads are dropped and counted."""
    allowed = sorted({p.sku for p in candidates}, key=len, reverse=True)  # the longest first: "AB-1:2" before "AB-1"
    skus, dropped, lines = [], 0, []
    for line in answer.split("\n"):  # the lines the grammar makes (a "\r" is no line break there)
        line = line.strip()
        sku = next((s for s in allowed if line.startswith(s) and line[len(s):].lstrip().startswith(":")), None)
        if sku is not None:
            if sku not in skus:
                skus.append(sku)
                lines.append(line)
        elif SKU_LIKE.fullmatch(line.split(":", 1)[0] if ":" in line else ""):
            dropped += 1
    return Parsed(skus, dropped, lines)


def request_set(products: list[Product], seed: int = 0) -> list[Request]:
    return recommendation_requests(products, min(MAX_REQUESTS, REQUESTS_PER_PRODUCT * len(products)), seed)


def with_candidates(products: list[Product], requests: list[Request],
                    search: CatalogSearch | None = None) -> list[tuple[Request, list[Product]]]:
    search = search or CatalogSearch(products)
    return list(zip(requests, search.find([r.text for r in requests], CANDIDATES)))


def write_recommend_data(products: list[Product], path: Path, seed: int = 0) -> tuple[Path, int]:
    """The task's training data as chat JSON Lines (category as the label, so the split keeps every category in
    every part), and how many requests were built."""
    rows = with_candidates(products, request_set(products, seed))
    convs = [Conversation([{"role": "user", "content": recommend_prompt(r.text, c)},
                           {"role": "assistant", "content": recommend_answer(r, c)}], intent=r.constraints["category"])
             for r, c in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, conversations_jsonl(convs))
    return path, len(convs)
