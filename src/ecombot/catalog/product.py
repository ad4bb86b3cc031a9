"""A product of the store's catalog, as every catalog task sees it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Product:
    """One catalog row. `attributes` hold what describes it (material, colour, size, dimensions, care, …: whatever
    columns the store has), `related` other SKUs of the catalog, `source` the file and row it came from."""

    sku: str
    title: str
    category: str
    price: float
    attributes: dict[str, str] = field(default_factory=dict, hash=False)
    description: str = ""
    related: tuple[str, ...] = ()
    source: str = ""

    def attribute(self, name: str) -> str:
        return self.attributes.get(name, "")

    def search_text(self) -> str:
        """What a search over the catalog reads: the title, the category and every attribute (not the description,
        which repeats them in prose and would weigh words by how the copywriter phrased them)."""
        values = "; ".join(f"{name}: {value}" for name, value in self.attributes.items())
        return f"{self.title}\n{self.category}\n{values}"

    def attribute_lines(self) -> list[str]:
        """Each attribute as the copy prompt and the catalog's knowledge passages state it ("Material: oak")."""
        return [f"{name.capitalize()}: {value}" for name, value in self.attributes.items()]

    def to_json(self) -> dict:
        return {"sku": self.sku, "title": self.title, "category": self.category, "price": self.price,
                "attributes": dict(self.attributes), "description": self.description, "related": list(self.related)}
