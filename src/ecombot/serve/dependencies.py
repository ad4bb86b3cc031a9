"""What the routes are handed: the app's shared state, who is calling, their rate limit and the parsed body."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Awaitable, Callable, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from ecombot.chat.engine import BASE, GenerationEngine, adapters_answer_limit
from ecombot.config.serve import ServeConfig
from ecombot.errors import EcombotError
from ecombot.knowledge import DEFAULT_HANDOFF, Grounder
from ecombot.serve.batcher import Batcher
from ecombot.serve.errors import ApiError
from ecombot.serve.security import (REVIEW, SESSION_TOKEN, Caller, KeyRing, RateLimiter, SessionTokens, fingerprint,
                                    persistent_secret)
from ecombot.serve.store import Store
from ecombot.serve.tasks import CatalogTasks

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
    auth_failures: RateLimiter  # per address: wrong keys and bad tokens, so keys cannot be guessed at speed
    keys: KeyRing
    answer_tokens: int  # answer length when a request does not say: the base model's, an adapter's not in answer_runs
    answer_runs: dict[str, Path] = field(default_factory=dict)  # adapter -> run: its own length (answer_tokens_for)
    answer_limits: dict[tuple[str, str | None], int] = field(default_factory=dict)  # per (adapter, version), read once
    grounder: Grounder | None = None  # the knowledge base support questions are answered from; None: the weights
    tasks: CatalogTasks = field(default_factory=CatalogTasks)  # adapters of the catalog tasks (copy, recommend)
    started: float = field(default_factory=time.time)  # /health's uptime, /v1/models' `created`

    @classmethod
    def build(cls, engine: GenerationEngine, store: Store, config: ServeConfig, grounder: Grounder | None = None,
              tasks: CatalogTasks | None = None, answer_runs: dict[str, Path] | None = None) -> ServerState:
        secret = persistent_secret(config.session_secret_file) if config.session_secret_file else None
        roles = {**dict.fromkeys(filter(None, config.api_keys), "api"),
                 **dict.fromkeys(filter(None, config.review_keys), REVIEW)}
        config = replace(config, api_keys=[], review_keys=[])  # from here on the keys exist only as salted hashes
        state = cls(config=config, engine=engine, store=store,
                    batcher=Batcher(engine, max_batch=config.max_batch, max_queue=config.max_queue),
                    sessions=SessionTokens(secret), limiter=RateLimiter(config.rate_limit_per_minute),
                    auth_failures=RateLimiter(config.rate_limit_per_minute), keys=KeyRing(roles),
                    answer_tokens=min(config.default_max_tokens or engine.decoding.max_new_tokens, config.max_tokens),
                    grounder=grounder, tasks=tasks or CatalogTasks(),
                    answer_runs=dict(answer_runs or {}))
        for adapter in state.answer_runs:  # read now: a damaged run fails the start, not its first request
            state.fit_answer_limit(adapter, engine.version(adapter))
        return state

    def fit_answer_limit(self, adapter: str, version: str | None) -> int:
        """Room for the longest answer `adapter`'s run and `version` trained on (chat.adapters_answer_limit), at most
        max_tokens; read once per version."""
        key = adapter, version
        if key not in self.answer_limits:
            self.answer_limits[key] = min(adapters_answer_limit([self.answer_runs[adapter]], version),
                                          self.config.max_tokens)
        return self.answer_limits[key]

    def answer_tokens_for(self, adapter: str) -> int:
        """`adapter`'s answer length when a request does not say: sized by the version it answers with, so a copy
        adapter's long descriptions do not size the support answers and a version `ecombot learn` promotes brings
        its own; else (an adapter without a run given, the base model) answer_tokens."""
        if adapter not in self.answer_runs:
            return self.answer_tokens
        version = self.engine.version(adapter)
        try:
            return self.fit_answer_limit(adapter, version)
        except EcombotError as exc:  # a promoted version's damaged summary: answer, at the server's default
            logging.getLogger("ecombot.serve").error("adapter %s %s: %s", adapter, version, exc)
            self.answer_limits[adapter, version] = self.answer_tokens
            return self.answer_tokens

    @property
    def handoff(self) -> str:
        """The answer that hands a conversation to an agent (also recognised when the model generates it)."""
        return self.grounder.handoff if self.grounder else DEFAULT_HANDOFF

    @property
    def page_model(self) -> str:
        """The model the chat page talks to: the first support adapter (not a copy or recommend one), else the base
        model."""
        return next((a for a in self.engine.adapters() if self.tasks.task(a) == "support"), BASE)


async def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def address_of(request: Request) -> str:
    """The client's address (behind a proxy listed in FORWARDED_ALLOW_IPS, the one it forwards for)."""
    return f"ip-{request.client.host if request.client else 'unknown'}"


def too_many(wait: float) -> ApiError:
    return ApiError(429, f"rate limit reached: retry in {wait:.1f} s", "rate_limit_error",
                    code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait)))})


async def caller(request: Request, state: State, credentials: Bearer) -> Caller:
    """An API key's holder, a chat page session, or (when the server has no keys) the client's address; else 401.

    Failed authentications count against the address: past the rate limit it gets 429 before its credentials
    are even looked at, so a key cannot be guessed faster than the rate limit, nor told right from wrong.
    """
    address = address_of(request)
    if (wait := state.auth_failures.wait(address)) > 0:
        raise too_many(wait)
    token = credentials.credentials if credentials else ""
    role = state.keys.role(token) if token else None
    if role:
        key = fingerprint(token)
        return Caller(key, "api", limited_as=key, may_review=role == REVIEW)
    session = state.sessions.verify(token) if token and state.config.web else None
    if session:
        return Caller(session, "web", limited_as=address)
    ended_session = bool(SESSION_TOKEN.fullmatch(token))  # said even without keys: the page renews on a 401
    if ended_session or state.keys:
        state.auth_failures.check(address)
        if ended_session:
            raise ApiError(401, "this chat page session has ended: open a new one (POST /v1/sessions)",
                           "authentication_error", code="invalid_session")
        raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                       "authentication_error", code="invalid_api_key")
    return Caller(address, "api", limited_as=address)


def check_rate(state: ServerState, limited_as: str) -> None:
    if (wait := state.limiter.check(limited_as)) > 0:
        raise too_many(wait)


async def rate_limited_caller(who: Annotated[Caller, Depends(caller)], state: State) -> Caller:
    """The caller, counted against its key's limit, or its address's (page sessions: however many it opens)."""
    check_rate(state, who.limited_as)
    return who


async def api_client(who: Annotated[Caller, Depends(rate_limited_caller)]) -> Caller:
    """For what the chat page does not do: a page session's token is refused (403)."""
    if who.channel == "web":
        raise ApiError(403, "a chat page session is only good for the chat page's own requests",
                       "permission_error", code="page_session_not_allowed")
    return who


async def reviewer(who: Annotated[Caller, Depends(api_client)]) -> Caller:
    """An agent signed in with a review key (`--review-key`): may approve customers' suggestions for training."""
    if not who.may_review:
        raise ApiError(403, "reviewing suggestions needs a review key (ecombot serve --review-key)",
                       "permission_error", code="review_key_required")
    return who


async def rate_limited_visitor(request: Request, state: State) -> None:
    """A chat page visitor asking for a session has no token yet: limited by address, like its sessions."""
    check_rate(state, address_of(request))


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
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
    except (ValueError, RecursionError) as exc:  # also too deeply nested, or an integer of over 4300 digits
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

    parsed.body_model = model  # read by the OpenAPI schema (app.py), which cannot see bodies read this way
    return parsed
