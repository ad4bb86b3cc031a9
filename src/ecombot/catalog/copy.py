"""The product-copy task: a product's attributes in, its description out, in the store's voice.

One prompt layout (`copy_prompt`) for training, evaluation and serving; the training data is the catalog's products
that have a description, one conversation each, labelled with the product's category so the split keeps every
category in every part. What a description may state is known exactly (the product's fields), so evaluation can
check it attribute by attribute (evaluate/metrics.py `copy_checks`)."""

from __future__ import annotations

from pathlib import Path

from ecombot import atomic
from ecombot.catalog.product import Product
from ecombot.data import Conversation, conversations_jsonl

INSTRUCTION = "Write the product description for our catalog."
MAX_CATEGORICAL_WORDS = 4  # an attribute whose values are short words from a small set (material, colour, size)


def copy_prompt(product: Product) -> str:
    """The instruction and every field a description may state, one per line (not the SKU: a model that sees it
    can only learn to memorise per SKU)."""
    lines = [INSTRUCTION, f"Title: {product.title}", f"Category: {product.category}", f"Price: ${product.price:.2f}"]
    lines += product.attribute_lines()
    return "\n".join(lines)


def copy_conversations(products: list[Product]) -> tuple[list[Conversation], int]:
    """One conversation per product with a description (prompt -> description), and how many had none."""
    out = [Conversation([{"role": "user", "content": copy_prompt(p)}, {"role": "assistant", "content": p.description}],
                        intent=p.category, source=p.source)
           for p in products if p.description]
    return out, len(products) - len(out)


def write_copy_data(products: list[Product], path: Path) -> tuple[Path, int]:
    """The task's training data as chat JSON Lines, which every command reads like any other data file."""
    conversations, skipped = copy_conversations(products)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, conversations_jsonl(conversations))
    return path, skipped


def categorical_values(products: list[Product]) -> dict[str, set[str]]:
    """Per category, the values a description can contradict its product with: those other products of the same
    category have for an attribute whose values are a few words each, shared by several products (material,
    colour, size; not free text such as care or dimensions). Within the category, because "small" is a size of a
    side table but only a word in a mug's description ("stacks in a small cupboard")."""
    values: dict[tuple[str, str], set[str]] = {}
    counts: dict[str, int] = {}
    for product in products:
        for name, value in product.attributes.items():
            values.setdefault((product.category, name), set()).add(value.lower())
            counts[name] = counts.get(name, 0) + 1
    every: dict[str, set[str]] = {}
    for name in counts:
        found = set().union(*(v for (_, n), v in values.items() if n == name))
        if len(found) <= counts[name] / 2 and all(len(v.split()) <= MAX_CATEGORICAL_WORDS for v in found):
            every[name] = found
    out: dict[str, set[str]] = {}
    for (category, name), found in values.items():
        if name in every:
            out.setdefault(category, set()).update(found)
    return out
