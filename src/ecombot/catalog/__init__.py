"""The store's catalog and the tasks built on it: products read from CSV / JSON / JSON Lines, the built-in catalog,
recommendation requests with known answers and the plain search baseline a model must beat."""

from ecombot.catalog.product import Product
from ecombot.catalog.readers import builtin_catalog_path, read_catalog
from ecombot.catalog.requests import Request, recommendation_requests
from ecombot.catalog.search import CatalogSearch, Recommendation, price_limit

__all__ = ["CatalogSearch", "Product", "Recommendation", "Request", "builtin_catalog_path", "price_limit",
           "read_catalog", "recommendation_requests"]
