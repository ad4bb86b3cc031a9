"""Catalog tasks on the server: one base model serves support, product-copy and recommendation adapters side by side,
and the request's `model` picks the task as it picks the adapter. A request to a copy or recommend adapter is turned
into the prompt its run trained on, so a client sends what a shop has (a product, a customer's request), not our
prompt layout; support adapters are answered as before, grounded in the knowledge base.

- copy: the customer message is a product as a JSON object (title, category, price, attributes…: the catalog
  reader's fields; a SKU is optional) or the SKU of a product of the run's catalog; the answer is its description.
- recommend: the customer message is a request ("a walnut side table under $200"); the run's catalog search finds
  the candidates, the model picks among them, decoding under a grammar that lets it name only those candidates
  (catalog/recommend.py GRAMMAR), and the reply keeps only the candidates it names (`recommendations` lists them with
  title and price; `dropped_skus` counts any other SKU-like line), so no answer ever names a product that does not
  exist. Such a reply is checked whole before it is sent, so a stream carries it in one piece.
Only the latest customer message is read: the task adapters were trained on single requests. A multi-task adapter
(`train --task support,copy`) is served once per task, under the task's name (`--adapter copy=runs/multi`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ecombot.catalog import CatalogSearch, Product, read_catalog
from ecombot.catalog.copy import copy_prompt
from ecombot.catalog.readers import product_from_record
from ecombot.catalog.recommend import (CANDIDATES, GRAMMAR, NONE_MATCH, REPETITION_PENALTY, answer_grammars,
                                       parse_recommendations, recommend_prompt)
from ecombot.errors import DataError, EcombotError
from ecombot.run_dir import RunDir
from ecombot.serve.errors import ApiError

NEW_PRODUCT_SKU = "new"  # a product sent for copy need not have a SKU yet (the prompt never shows it)


@dataclass
class TaskRequest:
    """What the model reads for one request, and how its answer becomes the reply (None: as generated)."""

    task: str  # copy or recommend
    messages: list[dict[str, str]]
    reply: Callable[[str, str], tuple[str, dict]] | None = None  # (answer, finish reason) -> (text sent, extras)
    repetition_penalty: float | None = None  # the task's own, where support's would spoil its answers
    answer: str | None = None  # the reply when the model has nothing to choose from (it is not asked)
    grammar: str | None = None  # what the answer may be (chat/grammar.py); None: free text


@dataclass
class Catalog:
    products: list[Product]
    by_sku: dict[str, Product]
    search: CatalogSearch | None = None  # for recommend adapters; built at start-up (it embeds every product)


@dataclass
class CatalogTasks:
    """The task of each served adapter whose run is a catalog task, and those runs' catalogs (read at start-up)."""

    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)  # adapter -> (task, catalog path or "builtin")
    catalogs: dict[str, Catalog] = field(default_factory=dict)

    @classmethod
    def of_adapters(cls, adapters: list[tuple[str, Path]]) -> CatalogTasks:
        tasks = {name: served_task(name, path) for name, path in adapters}
        tasks = {name: (task, catalog) for name, (task, catalog) in tasks.items() if task != "support"}
        catalogs = {}
        for task, catalog in tasks.values():
            if catalog not in catalogs:
                products = read_catalog(catalog)
                catalogs[catalog] = Catalog(products, {p.sku: p for p in products})
            if task == "recommend" and catalogs[catalog].search is None:
                catalogs[catalog].search = CatalogSearch(catalogs[catalog].products)
        return cls(tasks, catalogs)

    def task(self, adapter: str) -> str:
        return self.tasks[adapter][0] if adapter in self.tasks else "support"

    def request(self, adapter: str, messages: list[dict[str, str]]) -> TaskRequest:
        """The task's prompt for the latest customer message (ApiError 400 naming what to send instead)."""
        task, catalog_path = self.tasks[adapter]
        catalog = self.catalogs[catalog_path]
        text = messages[-1]["content"].strip()
        if task == "copy":
            return TaskRequest(task, [{"role": "user",
                                       "content": copy_prompt(product_to_describe(adapter, text, catalog))}])
        candidates = catalog.search.find([text], CANDIDATES)[0]
        grammar = (answer_grammars(GRAMMAR, [candidates], catalog.products) or [None])[0]
        return TaskRequest(task, [{"role": "user", "content": recommend_prompt(text, candidates)}],
                           lambda raw, finish: recommendation_reply(raw, candidates, finish), REPETITION_PENALTY,
                           None if candidates else NONE_MATCH, grammar)  # no candidates: e.g. nothing within budget


def served_task(name: str, path: Path) -> tuple[str, str | None]:
    """The task an adapter is served for, and its run's catalog: its run's task, or for a multi-task adapter the
    one it is served under (its name)."""
    run = RunDir(path)
    tasks, catalog = run.tasks(), run.task()[1]
    if len(tasks) == 1:
        return tasks[0], catalog
    if name not in tasks:
        flags = " ".join(f"--adapter {task}={path}" for task in tasks)
        raise EcombotError(f"{path} is one adapter for {len(tasks)} tasks ({', '.join(tasks)}): serve it under the "
                           f"name of the task each request's model asks for ({flags})")
    return name, catalog


def product_to_describe(adapter: str, text: str, catalog: Catalog) -> Product:
    """The product a copy request sends: a SKU of the catalog (as text, or as the only field of an object), else
    a product object checked like a catalog row (its SKU optional)."""
    try:
        record = json.loads(text)
    except ValueError:
        record = text
    if isinstance(record, dict):
        record = {str(k).strip().lower(): v for k, v in record.items() if v not in (None, "")}
    sku = record.get("sku") if isinstance(record, dict) and set(record) == {"sku"} else record
    if isinstance(sku, str) and sku.strip() in catalog.by_sku:
        return catalog.by_sku[sku.strip()]
    if not isinstance(record, dict):
        raise ApiError(400, f"model {adapter!r} writes product descriptions: send the product as a JSON object "
                            "(title, category, price and its attributes, e.g. material, colour, size) or the SKU of a "
                            "product in its catalog", param="messages")
    try:
        return product_from_record({"sku": NEW_PRODUCT_SKU, **record}, Path("request"), "product")
    except DataError as exc:
        raise ApiError(400, str(exc).removeprefix("request:"), param="messages") from None


def recommendation_reply(raw: str, candidates: list[Product], finish_reason: str = "stop") -> tuple[str, dict]:
    """The answer's lines that name a candidate (each once, in the model's order) and those products; other lines
    that start like a SKU are dropped and counted. An answer cut at max_tokens loses its unfinished last line. No
    candidate named: the store's "none matches" sentence, unless the answer was cut before naming one (then
    nothing: the finish reason "length" says why)."""
    if finish_reason == "length":
        raw = raw.rsplit("\n", 1)[0] if "\n" in raw else ""
    parsed = parse_recommendations(raw, candidates)
    shown = {p.sku: p for p in candidates}
    products = [{"sku": sku, "title": shown[sku].title, "category": shown[sku].category, "price": shown[sku].price}
                for sku in parsed.skus]
    none = NONE_MATCH if finish_reason != "length" else ""
    return "\n".join(parsed.lines) or none, {"recommendations": products, "dropped_skus": parsed.dropped}
