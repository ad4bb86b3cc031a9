"""Serve stage: OpenAI-compatible API with dynamic batching, the web chat page, and the conversation store."""

from ecombot.config.serve import ServeConfig
from ecombot.serve.app import create_app
from ecombot.serve.server import parse_adapters, run_server
from ecombot.serve.store import Store

__all__ = ["ServeConfig", "Store", "create_app", "parse_adapters", "run_server"]
