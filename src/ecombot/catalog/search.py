"""The plain search baseline for recommendations: the knowledge base's hybrid search (BM25 + MiniLM, rank fusion)
over the products' titles, categories and attributes, with the one filter a search box has, a budget ("under
$200"). A model that recommends must beat this to be worth shipping (benchmarks/recommend.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ecombot.catalog.product import Product
from ecombot.knowledge import Passage, Retriever

BUDGET = re.compile(r"\b(?:under|below|less than|up to|at most|no more than|max(?:imum)?|cheaper than|within)\s*"
                    r"(?:a budget of\s*)?[$€£]\s*(\d+(?:[.,]\d{1,2})?)", re.IGNORECASE)


def price_limit(text: str) -> float | None:
    """The budget a request states ("under $200", "no more than $45.50"), else None."""
    match = BUDGET.search(text)
    return float(match.group(1).replace(",", ".")) if match else None


@dataclass(frozen=True)
class Recommendation:
    sku: str
    reason: str
    score: float


class CatalogSearch:
    """Hybrid search over a catalog; a product's passage holds `Product.search_text` and points back by position."""

    def __init__(self, products: list[Product]):
        self.products = list(products)
        self.by_passage = {}
        passages = []
        for index, product in enumerate(self.products):
            passage = Passage("catalog", product.category, index + 1, product.search_text())
            passages.append(passage)
            self.by_passage[passage] = product
        self.retriever = Retriever(passages)

    def recommend(self, requests: list[str], k: int = 3) -> list[list[Recommendation]]:
        """The k best products per request within its stated budget, each with a one-line reason."""
        return [[Recommendation(product.sku, reason(product), score) for product, score in found]
                for found in self._search(requests, k)]

    def find(self, requests: list[str], k: int) -> list[list[Product]]:
        """The k best products per request within its stated budget (a recommendation task's candidates)."""
        return [[product for product, _ in found] for found in self._search(requests, k)]

    def _search(self, requests: list[str], k: int) -> list[list[tuple[Product, float]]]:
        limits = [price_limit(text) for text in requests]
        exclude = [None if limit is None else (lambda p, limit=limit: self.by_passage[p].price > limit)
                   for limit in limits]
        return [[(self.by_passage[h.passage], h.score) for h in hits]
                for hits in self.retriever.search(requests, k, exclude)]


def reason(product: Product) -> str:
    """One line a customer can check: what it is made of, its colour and size, its price."""
    details = [product.attribute(n) for n in ("material", "colour", "size") if product.attribute(n)]
    return f"{product.title}: {', '.join(details + [f'${product.price:.2f}'])}"
