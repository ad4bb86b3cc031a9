"""Serve stage: OpenAI-compatible API with dynamic batching, the web chat page, and the conversation store."""

from ecombot.config.serve import ServeConfig
from ecombot.serve.app import create_app
from ecombot.serve.server import build_engine, parse_adapters
from ecombot.serve.store import Store

__all__ = ["ServeConfig", "Store", "build_engine", "create_app", "parse_adapters"]
