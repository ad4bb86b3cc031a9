"""Catalog files: one product per CSV row, JSON Lines line or JSON list item (or {"products": [...]}).

Required: sku, title (or name), category, price. Optional: description, related (SKUs separated by ";", "|" or ",")
and attributes, as an "attributes" object or as any other column or key. Every problem is a DataError naming the
file, the row or line and the field: a recommendation must never name a SKU that does not exist, so a related SKU
missing from the catalog is an error too."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from ecombot.catalog.product import Product
from ecombot.data.readers import csv_table, json_records, read_text
from ecombot.errors import DataError

TITLE_KEYS = ("title", "name")
ALIASES = {"color": "colour"}  # one spelling, so that requests, candidates and reasons find the attribute
OWN_KEYS = {"sku", "title", "name", "category", "price", "description", "related", "attributes"}
PRICE = re.compile(r"^\s*[$€£]?\s*(\d+(?:[.,]\d{1,2})?)\s*(?:usd|eur|gbp|cad)?\s*$", re.IGNORECASE)


def builtin_catalog_path() -> Path:
    return Path(str(resources.files("ecombot.catalog.builtin").joinpath("harbor_pine_catalog.jsonl")))


def _text(value: Any, path: Path, where: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(path, where, name, f"expected text, got {type(value).__name__}")
    return str(value).strip()


def _required(record: dict, path: Path, where: str, names: tuple[str, ...]) -> str:
    key = next((n for n in names if record.get(n) not in (None, "")), names[0])
    value = _text(record.get(key, ""), path, where, key) if record.get(key) is not None else ""
    if not value:
        raise DataError(path, where, key, "missing required field")
    return value


def _price(value: Any, path: Path, where: str) -> float:
    if value is None or value == "":
        raise DataError(path, where, "price", "missing required field")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        price = float(value)
    else:
        match = PRICE.match(_text(value, path, where, "price"))
        if not match:
            raise DataError(path, where, "price", f"expected a price such as 129.99 or $129.99, got {value!r}")
        price = float(match.group(1).replace(",", "."))
    if not price > 0 or price != price or price == float("inf"):
        raise DataError(path, where, "price", f"must be a positive amount, got {value!r}")
    return round(price, 2)


def _attribute(value: Any, path: Path, where: str, name: str) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v, path, where, name) for v in value)
    return _text(value, path, where, name)


def _attributes(record: dict, path: Path, where: str) -> dict[str, str]:
    nested = record.get("attributes") or {}
    if not isinstance(nested, dict):
        raise DataError(path, where, "attributes", f"expected an object of name: value, got {type(nested).__name__}")
    out = {}
    for name, value in [*nested.items(), *((k, v) for k, v in record.items() if k not in OWN_KEYS)]:
        field = f"attributes.{name}" if name in nested else name
        if value is None or value == "":
            continue  # an empty cell: the product does not have this attribute
        name = str(name).strip().lower()
        out[ALIASES.get(name, name)] = _attribute(value, path, where, field)
    return out


def _related(value: Any, path: Path, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, list) else re.split(r"[;|,]", _text(value, path, where, "related"))
    return tuple(s for s in (_text(item, path, where, "related") for item in items) if s)


def product_from_record(record: Any, path: Path, where: str) -> Product:
    """One product from a row or object (keys in any case); a DataError naming `path`, `where` and the field."""
    if not isinstance(record, dict):
        raise DataError(path, where, None, f"expected a product object, got {type(record).__name__}")
    record = {str(key).strip().lower(): value for key, value in record.items()}  # "SKU", "Price" as in CSV headers
    description = record.get("description")
    return Product(sku=_required(record, path, where, ("sku",)), title=_required(record, path, where, TITLE_KEYS),
                   category=_required(record, path, where, ("category",)).lower(),
                   price=_price(record.get("price"), path, where),
                   attributes=_attributes(record, path, where),
                   description=_text(description, path, where, "description") if description else "",
                   related=_related(record.get("related"), path, where), source=f"{path.name}:{where}")


def _records(path: Path, text: str):
    if path.suffix.lower() in (".csv", ".tsv"):
        header_place, names, _, rows = csv_table(path, text)
        for required in ("sku", TITLE_KEYS, "category", "price"):
            if not any(n in names for n in ((required,) if isinstance(required, str) else required)):
                field = required if isinstance(required, str) else required[0]
                raise DataError(path, header_place, field, f"missing required column (header has: {', '.join(names)})")
        if "attributes" in names:
            raise DataError(path, header_place, "attributes", "in a CSV file each attribute is its own column "
                            "(material, colour, …)")
        yield from rows
        return
    for where, record in json_records(path, text):
        if where == "document" and isinstance(record, dict) and isinstance(record.get("products"), list):
            yield from ((f"products[{i}]", r) for i, r in enumerate(record["products"]))
        elif where == "document" and isinstance(record, dict) and "sku" in record:
            yield "line 1", record  # JSON Lines of one product
        elif where == "document":
            raise DataError(path, None, None, 'expected a list of products, {"products": [...]} or JSON Lines')
        else:
            yield where, record


def read_catalog(path: str | Path) -> list[Product]:
    """Every product of a catalog file ("builtin": Harbor & Pine's), checked: required fields, prices, SKUs unique,
    related SKUs present."""
    path, text = read_text(builtin_catalog_path() if str(path) == "builtin" else path)
    products, first_seen = [], {}
    for where, record in _records(path, text):
        product = product_from_record(record, path, where)
        if product.sku in first_seen:
            raise DataError(path, where, "sku", f"duplicate SKU {product.sku!r} (first at {first_seen[product.sku]})")
        first_seen[product.sku] = where
        products.append(product)
    if not products:
        raise DataError(path, None, None, "the catalog holds no products")
    for product in products:
        missing = [sku for sku in product.related if sku not in first_seen]
        if missing:
            raise DataError(path, product.source.rpartition(":")[2], "related",
                            f"SKU {missing[0]!r} is not in the catalog")
    return products
