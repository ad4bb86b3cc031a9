"""The catalog as knowledge: one passage per product, so a support answer about a product (its dimensions, care,
material, price) is grounded in the catalog the way a policy answer is grounded in the policy page
(`ecombot knowledge add --catalog FILE`). Fields come first, the description last: a prompt cuts a long passage at
its end."""

from __future__ import annotations

from pathlib import Path

from ecombot.catalog.product import Product
from ecombot.catalog.readers import builtin_catalog_path, read_catalog
from ecombot.knowledge import Passage

CATALOG_SOURCE = "catalog: "  # the knowledge-base source of a catalog file's products, before the file's name


def product_passage(product: Product, source: str, position: int) -> Passage:
    """`position`: where the product is in the file, counted from 1 (a CSV row, a JSON Lines line, a list item)."""
    fields = [f"{product.title} (SKU {product.sku}): {product.category}, ${product.price:.2f}."]
    fields += [f"{line.rstrip('.')}." for line in product.attribute_lines()]
    if product.description:
        fields.append(product.description)
    return Passage(source, f"{product.category} > {product.title}", position, " ".join(fields))


def catalog_passages(path: str | Path) -> tuple[str, list[Passage]]:
    """The source name ("catalog: products.csv") and a passage per product of the catalog file ("builtin": the
    built-in one)."""
    products = read_catalog(path)
    name = builtin_catalog_path().name if str(path) == "builtin" else Path(path).name
    source = f"{CATALOG_SOURCE}{name}"
    return source, [product_passage(p, source, i + 1) for i, p in enumerate(products)]
