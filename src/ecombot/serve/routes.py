"""The endpoints: the OpenAI-compatible API (`api`), the review of customers' suggestions (also `api`, for review
keys) and the chat page with its session tokens (`web`)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, replace
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ecombot.chat.engine import BASE, Decoding, GenerationEngine, PromptTooLong
from ecombot.chat.placeholders import normalise_context
from ecombot.knowledge import Grounding
from ecombot.serve.batcher import Job, QueueFull
from ecombot.serve.completion import Completion, answer_without_model
from ecombot.serve.dependencies import (ServerState, State, api_client, json_body, rate_limited_caller,
                                        rate_limited_visitor, reviewer)
from ecombot.serve.errors import ApiError
from ecombot.serve.schemas import (ChatCompletionRequest, FeedbackRequest, HandoffAnswerRequest, HandoffCloseRequest,
                                   HandoffRequest, ReviewRequest)
from ecombot.serve.security import Caller
from ecombot.serve.store import Conflict, NotFound

STATIC = resources.files("ecombot.serve") / "static"
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

api = APIRouter()
web = APIRouter()

# The caller before the body (dependencies are solved in order): who may not ask is refused before being read.
Who = Annotated[Caller, Depends(rate_limited_caller)]
Reviewer = Annotated[Caller, Depends(reviewer)]


def model_names(engine: GenerationEngine) -> list[str]:
    return [*engine.adapters(), BASE]


def adapter_for(model: str, state: ServerState) -> str:
    """The adapter a request's `model` names; the base model answers to its own name too."""
    if model in (BASE, state.config.model_name):
        return BASE
    if model in state.engine.adapters():
        return model
    raise ApiError(404, f"model {model!r} not found; available: {', '.join(model_names(state.engine))}",
                   "not_found_error", code="model_not_found", param="model")


def answer_budget(body: ChatCompletionRequest, adapter: str, state: ServerState) -> int:
    """The answer's token budget, once the request is within this server's limits (400 otherwise)."""
    config = state.config
    if len(body.messages) > config.max_messages:
        raise ApiError(400, f"too many messages ({len(body.messages)}); the limit is {config.max_messages}",
                       param="messages")
    max_tokens = body.max_completion_tokens or body.max_tokens or state.answer_tokens_for(adapter)
    if max_tokens > config.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} exceeds this server's limit of {config.max_tokens}",
                       param="max_tokens")
    return max_tokens


def check_page_request(body: ChatCompletionRequest, adapter: str, max_tokens: int, state: ServerState) -> None:
    """A chat page session may ask only what the page asks (403 otherwise): the page's model with its own system
    prompt, the server's sampling settings, answers no longer than the default.

    Anyone can open a page session, so with API keys configured this is all an anonymous visitor gets.
    """
    longest = state.answer_tokens_for(adapter)
    refused = [("model", adapter != state.page_model, f"the chat page talks to {state.page_model!r} only"),
               ("messages", any(m.role in ("system", "developer") for m in body.messages),
                "the page's model keeps its own system prompt"),
               ("max_tokens", max_tokens > longest, f"answers are at most {longest} tokens"),
               ("temperature", body.temperature is not None, "the server's sampling settings apply"),
               ("top_p", body.top_p is not None, "the server's sampling settings apply"),
               ("stop", bool(body.stop), "the server's stop rules apply")]
    for param, asked, why in refused:
        if asked:
            raise ApiError(403, f"a chat page session cannot set {param}: {why}", "permission_error",
                           code="page_session_not_allowed", param=param)


async def conversation_for(metadata: dict[str, str], who: Caller, state: ServerState) -> str:
    """The conversation a request goes into: the one it names (the caller's own, 404 otherwise), else a new one."""
    conversation_id = metadata.pop("conversation_id", None)
    if conversation_id is not None and not CONVERSATION_ID.fullmatch(conversation_id):
        raise ApiError(400, "metadata.conversation_id: 1-64 letters, digits, '-' or '_'",
                       param="metadata.conversation_id")
    try:
        return await run_in_threadpool(state.store.open_conversation, conversation_id, who.client, who.channel)
    except NotFound:
        raise ApiError(404, f"conversation {conversation_id!r} not found", "not_found_error",
                       param="metadata.conversation_id") from None


def decoding_for(body: ChatCompletionRequest, default: Decoding) -> Decoding:
    return replace(default, temperature=default.temperature if body.temperature is None else body.temperature,
                   top_p=body.top_p or default.top_p)


@api.get("/health")
async def health(state: State):
    return {"status": "ok", "model": state.config.model_name, "adapters": state.engine.adapters(),
            "queue": state.batcher.depth(), "batching": state.batcher.stats.to_dict(),
            "uptime_s": round(time.time() - state.started, 1)}


@api.get("/v1/models", dependencies=[Depends(api_client)])
async def models(state: State):
    return {"object": "list", "data": [{"id": name, "object": "model", "created": int(state.started),
                                        "owned_by": "ecombot"} for name in model_names(state.engine)]}


@api.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State, who: Who,
                           body: Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]):
    adapter = adapter_for(body.model, state)
    max_tokens = answer_budget(body, adapter, state)
    if who.channel == "web":
        check_page_request(body, adapter, max_tokens, state)
    messages = [m.as_dict() for m in body.messages]
    task = None if state.tasks.task(adapter) == "support" else await run_in_threadpool(state.tasks.request, adapter,
                                                                                        messages)
    # retrieval embeds the question on the CPU: off the event loop, like tokenizing
    if task:  # a catalog task reads its product or candidates, not the knowledge base
        grounding = Grounding(task.messages)
    else:
        grounding = await run_in_threadpool(state.grounder.ground, messages) if state.grounder else Grounding(messages)
    # answered without the model: the handoff, a stored answer (knowledge/grounding.py), a task's reply
    fixed = grounding.answer if grounding.answer is not None else task.answer if task else None
    prompt: list[int] = []  # a question answered without the model never reaches it
    if fixed is None:
        try:
            prompt = await run_in_threadpool(state.engine.prompt_ids, grounding.messages, adapter, max_tokens)
        except PromptTooLong as exc:
            raise ApiError(400, str(exc), code="context_length_exceeded", param="messages") from None
    metadata = dict(body.metadata or {})
    conversation_id = await conversation_for(metadata, who, state)
    decoding = decoding_for(body, state.engine.decoding)
    if task and task.repetition_penalty is not None:
        decoding = replace(decoding, repetition_penalty=task.repetition_penalty)
    job = Job(grounding.messages, prompt, adapter, decoding, max_tokens, asyncio.get_running_loop(),
              grammar=task.grammar if task else None)
    if fixed is not None:
        answer_without_model(job, fixed)
    else:
        try:
            state.batcher.submit(job)
        except QueueFull as exc:
            raise ApiError(503, str(exc), "server_overloaded", code="queue_full",
                           headers={"Retry-After": "1"}) from None
    completion = Completion(job, messages, grounding, body, who, conversation_id, normalise_context(metadata), state,
                            request, task)
    if body.stream:
        return StreamingResponse(completion.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                          "X-Conversation-Id": completion.conversation_id})
    return JSONResponse(await completion.whole(), headers={"X-Conversation-Id": completion.conversation_id})


@api.post("/v1/feedback")
async def feedback(state: State, who: Who, body: Annotated[FeedbackRequest, Depends(json_body(FeedbackRequest))]):
    try:
        await run_in_threadpool(state.store.record_feedback, body.completion_id, who.client,
                                1 if body.rating == "up" else -1, (body.correction or "").strip() or None)
    except NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error", param="completion_id") from None
    return {"status": "recorded"}


@api.post("/v1/handoff")
async def handoff(state: State, who: Who, body: Annotated[HandoffRequest, Depends(json_body(HandoffRequest))]):
    try:
        await run_in_threadpool(state.store.record_handoff, body.conversation_id, who.client, body.note)
    except NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error", param="conversation_id") from None
    return {"status": "recorded",
            "message": "Thanks - a member of our team will pick up this conversation and get back to you."}


@api.get("/v1/reviews")
async def pending_suggestions(state: State, _: Reviewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    """Customers' ratings and corrections waiting for a reviewer's decision, oldest first."""
    suggestions = await run_in_threadpool(state.store.pending_suggestions, limit)
    return {"object": "list", "data": [{**asdict(s), "created_at": s.created_at.isoformat()} for s in suggestions]}


@api.post("/v1/reviews/{suggestion_id}")
async def review_suggestion(state: State, who: Reviewer, suggestion_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
                            body: Annotated[ReviewRequest, Depends(json_body(ReviewRequest))]):
    """Approve a suggestion for training (optionally rewritten in `answer`) or reject it."""
    approve = body.decision == "approve"
    try:
        await run_in_threadpool(state.store.review, suggestion_id, approve, who.client, body.answer)
    except NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error", param="suggestion_id") from None
    return {"id": suggestion_id, "status": "approved" if approve else "rejected"}


@api.get("/v1/handoffs")
async def handoffs(state: State, _: Reviewer, waiting: bool = True):
    """Conversations handed over to an agent, oldest first (`waiting=false`: the answered and closed ones too)."""
    found = await run_in_threadpool(state.store.handoffs, waiting)
    return {"object": "list", "data": [{**asdict(h), "handed_over_at": h.handed_over_at.isoformat()} for h in found]}


@api.post("/v1/handoffs/{conversation_id}/answer")
async def answer_handoff(state: State, who: Reviewer, conversation_id: Annotated[str, Path(max_length=64)],
                         body: Annotated[HandoffAnswerRequest, Depends(json_body(HandoffAnswerRequest))]):
    """An agent's answer to a handed-over conversation: approved training data in place of the bot's last answer."""
    await settle_handoff(state.store.answer_handoff, conversation_id, body.answer, who.client)
    return {"conversation_id": conversation_id, "status": "answered"}


@api.post("/v1/handoffs/{conversation_id}/close")
async def close_handoff(state: State, who: Reviewer, conversation_id: Annotated[str, Path(max_length=64)],
                        body: Annotated[HandoffCloseRequest, Depends(json_body(HandoffCloseRequest))]):
    """Close a handed-over conversation without an answer to learn from (solved elsewhere, spam): it stops waiting."""
    await settle_handoff(state.store.close_handoff, conversation_id, body.because, who.client)
    return {"conversation_id": conversation_id, "status": "closed"}


async def settle_handoff(work, conversation_id: str, *args) -> None:
    """A store call answering or closing a handed-over conversation; its NotFound / Conflict as 404 / 409."""
    try:
        await run_in_threadpool(work, conversation_id, *args)
    except NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error", param="conversation_id") from None
    except Conflict as exc:
        raise ApiError(409, str(exc), "conflict_error", param="conversation_id") from None


@web.get("/", response_class=HTMLResponse)
async def page():
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@web.post("/v1/sessions", dependencies=[Depends(rate_limited_visitor)])
async def new_session(state: State):
    token, expires = state.sessions.issue()
    return {"token": token, "expires_at": expires, "model": state.page_model}
