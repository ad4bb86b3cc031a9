"""The HTTP server: OpenAI-compatible chat completions (plain and SSE), feedback, handoff and the chat page.

Everything a client can get wrong comes back as an OpenAI-shaped JSON error with a 4xx status; a 500 says
"internal server error" and nothing more (the traceback goes to the server log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import replace
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecombot.chat.engine import BASE, Generation, GenerationEngine, PromptTooLong
from ecombot.chat.placeholders import PlaceholderStream, normalise_context
from ecombot.config.serve import ServeConfig
from ecombot.serve.batcher import Batcher, Job, QueueFull
from ecombot.serve.schemas import ChatCompletionRequest, FeedbackRequest, HandoffRequest
from ecombot.serve.security import Caller, RateLimiter, SessionTokens, fingerprint
from ecombot.serve.store import Answer, NotFound, Store

log = logging.getLogger("ecombot.serve")
CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def read_body(request: Request, limit: int, model: type[BaseModel]):
    """Parse a JSON body into `model`: 413 over the size limit, 400 for bad JSON or a wrong field."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
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


def create_app(engine: GenerationEngine, store: Store, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    batcher = Batcher(engine, max_batch=config.max_batch, max_queue=config.max_queue)
    sessions = SessionTokens()
    limiter = RateLimiter(config.rate_limit_per_minute)
    keys = {k for k in config.api_keys if k}
    started = time.time()

    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="ecombot", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.batcher, app.state.store, app.state.sessions = batcher, store, sessions
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Conversation-Id"])

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), type_).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return ApiError(400, str(exc.errors()[0].get("msg", "invalid request"))).response()

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception):
        log.exception("unexpected error")
        return ApiError(500, "internal server error", "server_error").response()

    def adapter_for(model: str) -> str:
        if model in (BASE, config.model_name):
            return BASE
        if model in engine.adapters():
            return model
        raise ApiError(404, f"model {model!r} not found; available: {', '.join(model_names())}", "not_found_error",
                       code="model_not_found", param="model")

    def model_names() -> list[str]:
        return [*engine.adapters(), BASE]

    def caller(request: Request, web_allowed: bool = True) -> Caller:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token and token in keys:
            return Caller(fingerprint(token), "api")
        session = sessions.verify(token) if token and config.web and web_allowed else None
        if session:
            return Caller(session, "web")
        if keys:
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           "authentication_error", code="invalid_api_key")
        return Caller(f"ip-{request.client.host if request.client else 'unknown'}", "api")

    def limit_rate(who: Caller) -> None:
        wait = limiter.check(who.client)
        if wait > 0:
            raise ApiError(429, f"rate limit reached: retry in {wait:.1f} s", "rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait)))})

    async def checked(request: Request, model: type[BaseModel]):
        """What every POST endpoint does first: who is calling, their rate limit, then the parsed body."""
        who = caller(request)
        limit_rate(who)
        return who, await read_body(request, config.max_request_bytes, model)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name, "adapters": engine.adapters(),
                "queue": batcher.depth(), "batching": batcher.stats.to_dict(), "uptime_s": round(time.time() - started, 1)}

    @app.get("/v1/models")
    async def models(request: Request):
        caller(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(started),
                                            "owned_by": "ecombot"} for name in model_names()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        who, body = await checked(request, ChatCompletionRequest)
        if len(body.messages) > config.max_messages:
            raise ApiError(400, f"too many messages ({len(body.messages)}); the limit is {config.max_messages}",
                           param="messages")
        max_tokens = (body.max_completion_tokens or body.max_tokens or config.default_max_tokens
                      or engine.decoding.max_new_tokens)
        if max_tokens > config.max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} exceeds this server's limit of {config.max_tokens}",
                           param="max_tokens")
        adapter = adapter_for(body.model)
        metadata = dict(body.metadata or {})
        conversation_id = metadata.pop("conversation_id", None)
        if conversation_id is not None and not CONVERSATION_ID.match(conversation_id):
            raise ApiError(400, "metadata.conversation_id: 1-64 letters, digits, '-' or '_'",
                           param="metadata.conversation_id")
        if conversation_id and not await run_in_threadpool(store.may_continue, conversation_id, who.client):
            raise ApiError(404, f"conversation {conversation_id!r} not found", "not_found_error",
                           param="metadata.conversation_id")
        messages = [m.as_dict() for m in body.messages]
        try:
            prompt = await run_in_threadpool(engine.prompt_ids, messages, adapter, max_tokens)
        except PromptTooLong as exc:
            raise ApiError(400, str(exc), code="context_length_exceeded", param="messages") from None
        decoding = replace(engine.decoding, temperature=engine.decoding.temperature if body.temperature is None
                           else body.temperature, top_p=body.top_p or engine.decoding.top_p)
        job = Job(messages, prompt, adapter, decoding, max_tokens, asyncio.get_running_loop())
        try:
            batcher.submit(job)
        except QueueFull as exc:
            raise ApiError(503, str(exc), "server_overloaded", code="queue_full", headers={"Retry-After": "1"}) from None
        completion = Completion(job, body, who, conversation_id, normalise_context(metadata), store, request)
        if body.stream:
            return StreamingResponse(completion.sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                              "X-Conversation-Id": completion.conversation_id})
        return JSONResponse(await completion.whole(), headers={"X-Conversation-Id": completion.conversation_id})

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        who, body = await checked(request, FeedbackRequest)
        try:
            await run_in_threadpool(store.record_feedback, body.completion_id, who.client,
                                    1 if body.rating == "up" else -1, (body.correction or "").strip() or None)
        except NotFound as exc:
            raise ApiError(404, str(exc), "not_found_error", param="completion_id") from None
        return {"status": "recorded"}

    @app.post("/v1/handoff")
    async def handoff(request: Request):
        who, body = await checked(request, HandoffRequest)
        try:
            await run_in_threadpool(store.record_handoff, body.conversation_id, who.client, body.note)
        except NotFound as exc:
            raise ApiError(404, str(exc), "not_found_error", param="conversation_id") from None
        return {"status": "recorded",
                "message": "Thanks - a member of our team will pick up this conversation and get back to you."}

    if config.web:
        static = resources.files("ecombot.serve") / "static"

        @app.get("/", response_class=HTMLResponse)
        async def page():
            return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

        @app.post("/v1/sessions")
        async def new_session(request: Request):
            limit_rate(Caller(f"ip-{request.client.host if request.client else 'unknown'}", "web"))
            token, expires = sessions.issue()
            return {"token": token, "expires_at": expires, "model": (engine.adapters() or [BASE])[0]}

        app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was complete."""


class Completion:
    """One request's answer: collects (or streams) the batcher's events, fills placeholders, stores the result."""

    def __init__(self, job: Job, body: ChatCompletionRequest, who: Caller, conversation_id: str | None,
                 context: dict[str, str], store: Store, request: Request):
        self.job, self.body, self.who, self.store, self.request = job, body, who, store, request
        self.conversation_id = conversation_id or uuid.uuid4().hex
        self.context, self.prompt_tokens = context, len(job.prompt)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.started = time.monotonic()
        self.raw = ""  # the answer as generated (placeholders unfilled), cut at a stop sequence
        self.finish_reason = "stop"
        self.completion_tokens = 0

    async def next_event(self) -> tuple[str, object]:
        """The batcher's next event; notices a client that went away even while no text arrives."""
        while True:
            try:
                return await asyncio.wait_for(self.job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    raise ClientGone() from None

    async def events(self):
        """Customer-ready text pieces; stop sequences applied, placeholders filled."""
        fill = PlaceholderStream(self.context)
        held = ""  # text that might be the start of a stop sequence
        stops = self.body.stop or []
        while True:
            kind, value = await self.next_event()
            if kind == "error":
                raise value
            if kind == "done":
                result: Generation = value
                self.completion_tokens = result.new_tokens
                self.finish_reason = "length" if result.finish_reason == "length" else "stop"
                if held:
                    self.raw += held
                    yield fill.feed(held)
                break
            held += value
            hit = min((held.find(s) for s in stops if s in held), default=-1)
            if hit >= 0:
                self.job.cancelled = True  # the rest of this answer is not wanted: free its batch row
                self.raw += held[:hit]
                yield fill.feed(held[:hit])
                self.completion_tokens = await self._drain()
                self.finish_reason = "stop"
                break
            keep = max((len(s) - 1 for s in stops), default=0)
            ready, held = (held[:-keep], held[-keep:]) if keep else (held, "")
            self.raw += ready
            yield fill.feed(ready)
        yield fill.flush()

    async def _drain(self) -> int:
        while True:
            kind, value = await self.job.events.get()
            if kind == "done":
                return value.new_tokens
            if kind == "error":
                return 0

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def save(self, finish_reason: str | None = None) -> None:
        """Store the request's messages and this answer (one transaction; called from a worker thread)."""
        answer = Answer(self.id, self.raw.strip(), self.job.adapter, (time.monotonic() - self.started) * 1000,
                        self.prompt_tokens, self.completion_tokens, finish_reason or self.finish_reason)
        self.store.record_answer(self.conversation_id, self.who.client, self.who.channel, self.job.messages, answer)

    def cancel(self) -> None:
        """Free the batch row and keep the partial answer (stored in the background)."""
        self.job.cancelled = True
        asyncio.get_running_loop().run_in_executor(None, self._save_quietly, "cancelled")

    async def whole(self) -> dict:
        try:
            text = "".join([piece async for piece in self.events()])
        except ClientGone:
            self.cancel()
            raise
        except Exception as exc:
            raise self._error(exc) from None
        await run_in_threadpool(self.save)
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.body.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text.strip()},
                             "logprobs": None, "finish_reason": self.finish_reason}],
                "usage": self.usage()}

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.body.model,
                 "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def sse(self):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        finished = False
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async for piece in self.events():
                if piece:
                    if await self.request.is_disconnected():
                        raise ClientGone()
                    yield self._chunk({"content": piece})
            yield self._chunk({}, self.finish_reason)
            if self.body.stream_options and self.body.stream_options.include_usage:
                usage = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                         "model": self.body.model, "choices": [], "usage": self.usage()}
                yield f"data: {json.dumps(usage)}\n\n"
            finished = True
            await run_in_threadpool(self.save)
            yield "data: [DONE]\n\n"
        except ClientGone:
            self.cancel()
        except (asyncio.CancelledError, GeneratorExit):  # the server dropped the response: same as a client gone
            if not finished:
                self.cancel()
            raise
        except Exception as exc:
            error = self._error(exc)
            yield f"data: {json.dumps({'error': {'message': error.message, 'type': error.type, 'code': error.code}})}\n\n"
            yield "data: [DONE]\n\n"

    def _save_quietly(self, finish_reason: str) -> None:
        try:
            self.save(finish_reason)
        except Exception:
            log.exception("could not store a cancelled answer")

    def _error(self, exc: Exception) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, QueueFull):
            return ApiError(503, str(exc), "server_overloaded", code="queue_full")
        log.error("generation failed", exc_info=exc)
        return ApiError(500, "internal server error", "server_error")
