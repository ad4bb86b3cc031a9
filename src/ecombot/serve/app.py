"""The HTTP server: OpenAI-compatible chat completions (plain and SSE), feedback, handoff, review and the chat page.

The routes live in routes.py, what they are handed (state, caller, body) in dependencies.py, the error
shape in errors.py; this module puts one app together.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from ecombot.chat.engine import GenerationEngine
from ecombot.config.serve import ServeConfig
from ecombot.knowledge import Grounder
from ecombot.serve.dependencies import ServerState
from ecombot.serve.errors import register_error_handlers
from ecombot.serve.routes import STATIC, api, web
from ecombot.serve.store import Store
from ecombot.serve.tasks import CatalogTasks

# The page runs only its own script and style, talks only to this server, and cannot be framed (clickjacking).
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (plain ASGI: streamed answers pass through untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@asynccontextmanager
async def batching(app: FastAPI):
    """The batcher works as long as the server runs (on its own thread, or on the one `run_server` leaves it), and so
    does the watch for promoted versions."""
    state = app.state.server
    stop = threading.Event()
    watch = threading.Thread(target=watch_versions, args=(state.engine, state.config.reload_every_s, stop),
                             name="ecombot-versions", daemon=True)
    state.batcher.start()
    if state.config.reload_every_s > 0:
        watch.start()
    yield
    stop.set()
    state.batcher.stop()


def watch_versions(engine: GenerationEngine, every_s: float, stop: threading.Event) -> None:
    """Swap in each adapter version `ecombot learn` promotes (or `adapter rollback` restores) without a restart;
    a failed reload (a half-copied directory) is logged and tried again at the next check."""
    log = logging.getLogger("ecombot.serve")
    while not stop.wait(every_s):
        try:
            for adapter, version in engine.reload_promoted().items():
                log.warning("adapter %s: now answering with version %s", adapter, version)
        except Exception as exc:  # the server keeps answering with the version it has
            log.error("adapter reload failed, still answering with the loaded versions: %s", exc)


def body_model(route: APIRoute):
    """The model a route's `json_body` dependency parses, else None."""
    return next((d.call.body_model for d in route.dependant.dependencies if hasattr(d.call, "body_model")), None)


def describe_json_bodies(app: FastAPI, routers: list[APIRouter]) -> None:
    """Put each route's JSON body in /openapi.json: bodies are read by `json_body` dependencies (so that size,
    key and rate limit come first), which FastAPI's schema cannot see; clients and API fuzzers need them."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for route in (route for router in routers for route in router.routes if isinstance(route, APIRoute)):
            model = body_model(route)
            if model is None:
                continue
            body_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body_schema.pop("$defs", {}))
            components[model.__name__] = body_schema
            for method in route.methods:
                schema["paths"][route.path_format][method.lower()]["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        return schema

    app.openapi = openapi


def create_app(engine: GenerationEngine, store: Store, config: ServeConfig | None = None,
               grounder: Grounder | None = None, tasks: CatalogTasks | None = None,
               answer_runs: dict[str, Path] | None = None) -> FastAPI:
    """The app; with a `grounder`, every support answer comes from the knowledge base (or is handed to an agent);
    `tasks` names the adapters that write product copy or recommend products (serve/tasks.py); `answer_runs`
    (adapter -> run) sizes each adapter's answers by its own training data (config.default_max_tokens: the others')."""
    config = config or ServeConfig()
    app = FastAPI(title="ecombot", docs_url=None, redoc_url=None, lifespan=batching)
    app.state.server = ServerState.build(engine, store, config, grounder, tasks, answer_runs)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Conversation-Id"])
    app.add_middleware(SecurityHeaders)
    register_error_handlers(app)
    routers = [api, web] if config.web else [api]
    for router in routers:
        app.include_router(router)
    if config.web:
        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    describe_json_bodies(app, routers)
    return app
