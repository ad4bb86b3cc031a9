"""One chat completion's answer on its way back: streamed (SSE) or whole, placeholders filled, then stored.

Besides OpenAI's fields, a response carries `sources` (the knowledge passages the answer was grounded in, as
`Hit.to_source()` dicts; a stored answer given as written has its Q&A pair alone, marked `"reused": true` with its
`"reuse_cosine"`) and `handoff` (true when the answer handed the conversation to an agent); OpenAI's clients keep unknown fields as
extras. A stream carries them on its last chunk, the one with `finish_reason`.
A recommendation adds `recommendations` and `dropped_skus` (serve/tasks.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from ecombot.chat.engine import Generation
from ecombot.chat.placeholders import PlaceholderStream
from ecombot.knowledge import Grounding, is_handoff
from ecombot.serve.batcher import Job, QueueFull
from ecombot.serve.dependencies import ServerState
from ecombot.serve.errors import ApiError
from ecombot.serve.schemas import ChatCompletionRequest
from ecombot.serve.security import Caller
from ecombot.serve.store import Answer, Store
from ecombot.serve.tasks import TaskRequest

log = logging.getLogger("ecombot.serve")
CLIENT_CHECK_S = 0.25  # how often a request in progress asks whether its client is still there
NOT_COVERED = "not covered by the knowledge base"  # the store's handoff note when the model was not asked
HANDED_OVER = "the bot answered that it hands over to an agent"  # ... when the model itself said so
FACTS_LEFT_OUT = "the answer stated what the knowledge base does not, left out: "  # ... when the fact check cut


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was complete."""


def answer_without_model(job: Job, text: str) -> None:
    """Give `job` the answer `text` (the handoff, a stored answer, or a task's reply that needs no model) as the
    batcher would give a generated one, in one piece: the response, the stream and the store treat it like any
    answer, and the model never sees the request."""
    job.events.put_nowait(("text", text))
    job.events.put_nowait(("done", Generation(text, 0, 0)))


class Completion:
    """One request's answer: collects (or streams) the batcher's events, fills placeholders, stores the result.

    `asked` is the request's conversation as the customer sent it (what the store keeps); the job carries it
    grounded, as the model reads it."""

    def __init__(self, job: Job, asked: list[dict[str, str]], grounding: Grounding, body: ChatCompletionRequest,
                 who: Caller, conversation_id: str, context: dict[str, str], state: ServerState, request: Request,
                 task: TaskRequest | None = None):
        self.job, self.asked, self.grounding, self.body, self.who = job, asked, grounding, body, who
        self.task, self.task_extras = task, {}  # a catalog task's request and reply (serve/tasks.py)
        self.sources = grounding.sources if grounding.covered else []  # passages too weak to answer from are none
        # a generated support answer states no fact the knowledge base does not (Grounder.fact_check)
        self.check = state.grounder.fact_check(grounding) if state.grounder and task is None else None
        self.store: Store = state.store
        self.handoff_text, self.request = state.handoff, request
        self.conversation_id = conversation_id
        self.context, self.prompt_tokens = context, len(job.prompt)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.started = self.client_checked_at = time.monotonic()
        self.raw = ""  # the answer as sent (placeholders unfilled): cut at a stop sequence, through the fact check
        self.finish_reason = "stop"
        self.completion_tokens = 0
        self.version: str | None = None  # the adapter version that answered, from the batch's result

    async def next_event(self) -> tuple[str, object]:
        """The batcher's next event; notices a client that went away (every 0.25 s), whether text arrives or not."""
        while True:
            if time.monotonic() >= self.client_checked_at + CLIENT_CHECK_S:
                if await self.request.is_disconnected():
                    raise ClientGone()
                self.client_checked_at = time.monotonic()
            try:
                return await asyncio.wait_for(self.job.events.get(), timeout=CLIENT_CHECK_S)
            except asyncio.TimeoutError:
                continue

    async def events(self):
        """Customer-ready text pieces; a catalog task's reply (recommendations) whole, once checked."""
        if self.task is None or self.task.reply is None:
            async for piece in self.generated():
                yield piece
            return
        async for _ in self.generated():
            pass
        self.raw, self.task_extras = self.task.reply(self.raw, self.finish_reason)
        yield self.raw

    async def generated(self):
        """The answer's text pieces as generated; stop sequences applied, facts checked, placeholders filled."""
        fill = PlaceholderStream(self.context)
        held = ""  # text that might be the start of a stop sequence
        stops = self.body.stop or []
        while True:
            kind, value = await self.next_event()
            if kind == "error":
                raise value
            if kind == "done":
                result: Generation = value
                self.completion_tokens, self.version = result.new_tokens, result.version
                self.finish_reason = "length" if result.finish_reason == "length" else "stop"
                yield fill.feed(self._checked(held))
                break
            held += value
            hit = min((held.find(s) for s in stops if s in held), default=-1)
            if hit >= 0:
                self.job.cancelled = True  # the rest of this answer is not wanted: free its batch row
                yield fill.feed(self._checked(held[:hit]))
                self.completion_tokens = await self._drain()
                self.finish_reason = "stop"
                break
            keep = max((len(s) - 1 for s in stops), default=0)
            ready, held = (held[:-keep], held[-keep:]) if keep else (held, "")
            yield fill.feed(self._checked(ready))
        if self.check:
            rest = self.check.flush()
            self.raw += rest
            yield fill.feed(rest)
        yield fill.flush()

    def _checked(self, text: str) -> str:
        """`text` as the customer may see it (the fact check's whole sentences), kept in `raw`."""
        text = self.check.feed(text) if self.check and text else text
        self.raw += text
        return text

    async def _drain(self) -> int:
        while True:
            kind, value = await self.job.events.get()
            if kind == "done":
                self.version = value.version
                return value.new_tokens
            if kind == "error":
                return 0

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def handoff_note(self) -> str | None:
        """Why an agent should take over (the store's note), or None when the bot answered by itself."""
        if not self.grounding.covered:
            return NOT_COVERED
        if self.check and self.check.dropped:
            return FACTS_LEFT_OUT + " / ".join(self.check.left_out)
        return HANDED_OVER if is_handoff(self.raw, self.handoff_text) else None

    def extras(self) -> dict:
        """The fields ecombot adds to OpenAI's response (see the module's docstring)."""
        return {"sources": self.sources, "handoff": self.handoff_note() is not None, **self.task_extras}

    def save(self, finish_reason: str | None = None) -> None:
        """Store the request's messages and this answer (one transaction; called from a worker thread)."""
        answer = Answer(self.id, self.raw.strip(), self.job.adapter, (time.monotonic() - self.started) * 1000,
                        self.prompt_tokens, self.completion_tokens, finish_reason or self.finish_reason,
                        self.sources, self.handoff_note(), self.version, self.task.task if self.task else None)
        self.store.record_answer(self.conversation_id, self.who.client, self.who.channel, self.asked, answer)

    def cancel(self) -> None:
        """Free the batch row and keep the partial answer (stored in the background)."""
        self.job.cancelled = True
        asyncio.get_running_loop().run_in_executor(None, self._save_quietly, "cancelled")

    async def whole(self) -> dict:
        try:
            text = "".join([piece async for piece in self.events()])
        except ClientGone:
            self.cancel()
            raise ApiError(499, "the client closed the request", code="client_closed_request") from None
        except Exception as exc:
            raise self._error(exc) from None
        await run_in_threadpool(self.save)
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.body.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text.strip()},
                             "logprobs": None, "finish_reason": self.finish_reason}],
                "usage": self.usage(), **self.extras()}

    def _chunk(self, delta: dict, finish_reason: str | None = None, extras: dict | None = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.body.model,
                 "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                 **(extras or {})}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def sse(self):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        finished = False
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async for piece in self.events():
                if piece:
                    yield self._chunk({"content": piece})
            yield self._chunk({}, self.finish_reason, self.extras())
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
            yield f"data: {json.dumps(self._error(exc).body())}\n\n"
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
