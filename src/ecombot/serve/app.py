"""The HTTP server: OpenAI-compatible chat completions (plain and SSE), feedback, handoff and the chat page.

The routes live in routes.py, what they are handed (state, caller, body) in dependencies.py, the error
shape in errors.py; this module puts one app together.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from ecombot.chat.engine import GenerationEngine
from ecombot.config.serve import ServeConfig
from ecombot.serve.dependencies import ServerState
from ecombot.serve.errors import register_error_handlers
from ecombot.serve.routes import STATIC, api, web
from ecombot.serve.store import Store


@asynccontextmanager
async def batching(app: FastAPI):
    """The batcher's worker thread runs as long as the server does."""
    batcher = app.state.server.batcher
    batcher.start()
    yield
    batcher.stop()


def create_app(engine: GenerationEngine, store: Store, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    app = FastAPI(title="ecombot", docs_url=None, redoc_url=None, lifespan=batching)
    app.state.server = ServerState.build(engine, store, config)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Conversation-Id"])
    register_error_handlers(app)
    app.include_router(api)
    if config.web:
        app.include_router(web)
        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
