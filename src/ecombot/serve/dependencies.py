"""What the routes are handed: the app's shared state, who is calling, their rate limit and the parsed body."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Awaitable, Callable, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from ecombot.chat.engine import GenerationEngine
from ecombot.config.serve import ServeConfig
from ecombot.serve.batcher import Batcher
from ecombot.serve.errors import ApiError
from ecombot.serve.security import Caller, RateLimiter, SessionTokens, fingerprint
from ecombot.serve.store import Store

Body = TypeVar("Body", bound=BaseModel)


@dataclass
class ServerState:
    """One app's shared parts, kept on `app.state.server` (one per app: several can run side by side)."""

    config: ServeConfig
    engine: GenerationEngine
    store: Store
    batcher: Batcher
    sessions: SessionTokens
    limiter: RateLimiter
    api_keys: set[str]
    started: float = field(default_factory=time.time)  # /health's uptime, /v1/models' `created`

    @classmethod
    def build(cls, engine: GenerationEngine, store: Store, config: ServeConfig) -> ServerState:
        return cls(config=config, engine=engine, store=store,
                   batcher=Batcher(engine, max_batch=config.max_batch, max_queue=config.max_queue),
                   sessions=SessionTokens(), limiter=RateLimiter(config.rate_limit_per_minute),
                   api_keys={k for k in config.api_keys if k})


async def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def by_address(request: Request, channel: str) -> Caller:
    return Caller(f"ip-{request.client.host if request.client else 'unknown'}", channel)


async def caller(request: Request, state: State, credentials: Bearer) -> Caller:
    """An API key's holder, a chat page session, or (when the server has no keys) the client's address; else 401."""
    token = credentials.credentials if credentials else ""
    if token in state.api_keys:
        return Caller(fingerprint(token), "api")
    session = state.sessions.verify(token) if token and state.config.web else None
    if session:
        return Caller(session, "web")
    if state.api_keys:
        raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                       "authentication_error", code="invalid_api_key")
    return by_address(request, "api")


def check_rate(state: ServerState, who: Caller) -> None:
    wait = state.limiter.check(who.client)
    if wait > 0:
        raise ApiError(429, f"rate limit reached: retry in {wait:.1f} s", "rate_limit_error",
                       code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait)))})


async def rate_limited_caller(who: Annotated[Caller, Depends(caller)], state: State) -> Caller:
    check_rate(state, who)
    return who


async def rate_limited_visitor(request: Request, state: State) -> None:
    """A chat page visitor asking for a session has no token yet: limited by address."""
    check_rate(state, by_address(request, "web"))


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
    return bytes(body)


def validated(model: type[Body], body: bytes) -> Body:
    """`body` as JSON parsed into `model`; 400 for bad JSON, or naming the first wrong field in `param`."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param}: {message}" if param else message, param=param) from None


def json_body(model: type[Body]) -> Callable[..., Awaitable[Body]]:
    """A dependency: the JSON body parsed into `model`, within the server's size limit.

    Why not FastAPI's body parameters: they read the whole body before anything can refuse it for its size,
    and they are parsed before any dependency runs, so a client without a key or over its rate limit would
    hear about its body first. Declare this after the caller: FastAPI solves dependencies in order.
    """

    async def parsed(request: Request, state: State) -> Body:
        return validated(model, await read_limited(request, state.config.max_request_bytes))

    return parsed
