"""The HTTP server: OpenAI-compatible API on a real (tiny) model, and the server layer on a scripted engine."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ecombot.chat import BASE, Decoding, Generation
from ecombot.chat.engine import PromptTooLong
from ecombot.models import encode_prompt
from ecombot.serve import ServeConfig, Store, build_engine, create_app
from ecombot.serve.store import ConversationRow

QUESTION = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture(scope="module")
def engine(talkative_model_dir, adapter_dirs):
    return build_engine(str(talkative_model_dir), [("support", adapter_dirs["support"]), ("fr", adapter_dirs["fr"])],
                        Decoding(max_new_tokens=12, repetition_penalty=3.0), precision="fp32")


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'conversations.db'}")


@pytest.fixture
def server(engine, store, running_server):
    with running_server(create_app(engine, store, ServeConfig(model_name="tiny"))) as running:
        yield running


def sse_events(response: httpx.Response) -> list[str]:
    text = response.text
    assert text.endswith("\n\n")
    blocks = text.strip("\n").split("\n\n")
    assert all(block.startswith("data: ") for block in blocks), blocks
    return [block[len("data: "):] for block in blocks]


def test_models_health_and_adapter_switching(server, engine):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["support", "fr", "base"] and models["object"] == "list"
    assert httpx.get(f"{server.url}/health").json()["adapters"] == ["support", "fr"]
    answers = {}
    for name in ["support", "fr", "base", "tiny"]:  # "tiny" is the base model's own name
        body = httpx.post(f"{server.url}/v1/chat/completions", json={"model": name, "messages": QUESTION}).json()
        answers[name] = body["choices"][0]["message"]["content"]
        assert body["model"] == name
    assert answers["base"] == answers["tiny"]
    for name, adapter in [("support", "support"), ("fr", "fr"), ("base", BASE)]:  # same as the engine, no reload
        assert answers[name] == engine.generate([QUESTION], adapter)[0].text
    assert len({answers["support"], answers["fr"], answers["base"]}) == 3  # the adapters really change the model


def test_completion_shape_usage_and_store(server, engine, store):
    response = httpx.post(f"{server.url}/v1/chat/completions",
                          json={"model": "support", "messages": QUESTION, "max_tokens": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == len(engine.prompt_ids(QUESTION, "support", 5))
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5
    [conversation] = store.conversations()
    assert conversation.id == response.headers["x-conversation-id"] and conversation.channel == "api"
    user, answer = conversation.messages
    assert (user.role, user.content) == ("user", "Where is my order?")
    assert answer.completion_id == body["id"] and answer.adapter == "support" and answer.latency_ms > 0
    assert (answer.prompt_tokens, answer.completion_tokens, answer.finish_reason) == (body["usage"]["prompt_tokens"], 5, "length")


def test_each_prompt_is_tokenized_once(server, monkeypatch):
    from ecombot.chat import engine as engine_module

    encoded = []

    def counted(tokenizer, messages):
        encoded.append(messages)
        return encode_prompt(tokenizer, messages)

    monkeypatch.setattr(engine_module, "encode_prompt", counted)
    response = httpx.post(f"{server.url}/v1/chat/completions",
                          json={"model": "support", "messages": QUESTION, "max_tokens": 3})
    assert response.status_code == 200 and len(encoded) == 1  # checked once, generated from the same ids


def test_streaming_matches_openai_chunk_format(server):
    request = {"model": "support", "messages": QUESTION, "max_tokens": 10}
    whole = httpx.post(f"{server.url}/v1/chat/completions", json=request).json()
    response = httpx.post(f"{server.url}/v1/chat/completions",
                          json={**request, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(content) >= 2  # streamed in pieces, not at once
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert "".join(content) == whole["choices"][0]["message"]["content"]


def test_openai_client_streaming_and_not(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="fr", messages=QUESTION, max_tokens=8)
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 8
    stream = client.chat.completions.create(model="fr", messages=QUESTION, max_tokens=8, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == reply.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["support", "fr", "base"]
    with pytest.raises(Exception) as error:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert getattr(error.value, "status_code", None) == 404


def test_concurrent_requests_are_batched_and_answer_like_alone(server, engine):
    questions = [f"Question number {i} about my parcel" for i in range(6)]
    alone = [engine.generate([[{"role": "user", "content": q}]], "support")[0].text for q in questions]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda q: httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": "support", "messages": [{"role": "user", "content": q}]}).json(), questions))
    assert [r["choices"][0]["message"]["content"] for r in replies] == alone
    assert httpx.get(f"{server.url}/health").json()["batching"]["largest_batch"] >= 2


@pytest.mark.parametrize("body, status, code, param", [
    (b"{not json", 400, "invalid_json", None),
    ({"model": "support", "messages": "hi"}, 400, None, "messages"),
    ({"model": "support"}, 400, None, "messages"),
    ({"model": "support", "messages": []}, 400, None, "messages"),
    ({"model": "support", "messages": [{"role": "user", "content": 5}]}, 400, None, "messages.0.content.str"),
    ({"model": "support", "messages": [{"role": "tool", "content": "x"}]}, 400, None, "messages.0.role"),
    ({"model": "support", "messages": [{"role": "assistant", "content": "x"}]}, 400, None, "messages"),
    ({"model": "support", "messages": QUESTION, "max_tokens": 10_000}, 400, None, "max_tokens"),
    ({"model": "support", "messages": QUESTION, "max_tokens": "ten"}, 400, None, "max_tokens"),
    ({"model": "support", "messages": QUESTION, "n": 2}, 400, None, "n"),
    ({"model": "support", "messages": QUESTION, "temperature": 5}, 400, None, "temperature"),
    ({"model": "gpt-4", "messages": QUESTION}, 404, "model_not_found", "model"),
    ({"model": "support", "messages": QUESTION * 70}, 400, None, "messages"),
    ({"model": "support", "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "context_length_exceeded", "messages"),
    ({"model": "support", "messages": QUESTION, "metadata": {"conversation_id": "../etc"}}, 400, None, "metadata.conversation_id"),
])
def test_bad_requests_get_openai_shaped_4xx(server, body, status, code, param):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{server.url}/v1/chat/completions", headers={"content-type": "application/json"}, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and (code is None or error["code"] == code)
    assert "Traceback" not in response.text


def test_oversized_body_unknown_route_and_method(server):
    big = {"model": "support", "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    missing = httpx.get(f"{server.url}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert httpx.get(f"{server.url}/v1/chat/completions").status_code == 405


# ---- the server layer on a scripted engine: placeholders, stop sequences, queue, limits, auth ----

class ScriptedEngine:
    """Answers with a fixed text, one word per step (optionally slowly), recording batches and cancellations."""

    context_tokens = 256

    def __init__(self, answer: str = "Your order {{Order Number}} left our warehouse today.", step_s: float = 0.0):
        self.answer, self.step_s = answer, step_s
        self.decoding = Decoding(max_new_tokens=50)
        self.batches: list[int] = []
        self.cancelled = 0

    def adapters(self) -> list[str]:
        return ["support"]

    def prompt_ids(self, messages, adapter=None, reserve=None):
        words = sum(len(m["content"].split()) for m in messages)
        if words + (reserve or 0) > self.context_tokens:
            raise PromptTooLong(f"{words} words")
        return list(range(words))

    def generate(self, conversations, adapter=None, decoding=None, max_new_tokens=None, on_text=None, prompts=None):
        self.batches.append(len(conversations))
        words = self.answer.split(" ")
        limits = max_new_tokens or [50] * len(conversations)
        texts, finish = [""] * len(conversations), ["stop"] * len(conversations)
        for step, word in enumerate(words):
            time.sleep(self.step_s)
            for row in range(len(conversations)):
                if finish[row] != "stop" or step >= limits[row]:
                    finish[row] = "length" if finish[row] == "stop" else finish[row]
                    continue
                piece = word if step == 0 else " " + word
                texts[row] += piece
                if on_text and on_text(row, piece) is False:
                    finish[row] = "cancelled"
                    self.cancelled += 1
        return [Generation(t, len(t.split()), 3, f) for t, f in zip(texts, finish)]

    def stream(self, messages, adapter=None):
        yield self.answer


def chat(url: str, token: str | None = None, **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "support", "messages": QUESTION, **extra})


def test_placeholders_filled_from_metadata_or_asked_for(store, running_server):
    with running_server(create_app(ScriptedEngine(), store)) as server:
        known = chat(server.url, metadata={"Order Number": "HP-1042"}).json()["choices"][0]["message"]["content"]
        assert known == "Your order HP-1042 left our warehouse today."
        unknown = chat(server.url, stream=True)
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in sse_events(unknown)[:-1])
        assert "{{" not in text and text.startswith("Your order your order number left")
        assert text.endswith("Could you please share your order number so I can help you further?")
    stored = [m.content for c in store.conversations() for m in c.messages if m.role == "assistant"]
    assert stored == ["Your order {{Order Number}} left our warehouse today."] * 2  # as generated, no customer data


def test_stop_sequences_cut_the_answer(store, running_server):
    engine = ScriptedEngine("Returns are free. STOP Internal note: do not say this.", step_s=0.05)
    with running_server(create_app(engine, store)) as server:
        body = chat(server.url, stop=["STOP"]).json()
        streamed = chat(server.url, stop="STOP", stream=True)
    assert body["choices"][0]["message"]["content"] == "Returns are free."
    assert body["choices"][0]["finish_reason"] == "stop"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in sse_events(streamed)[:-1])
    assert text.strip() == "Returns are free." and engine.cancelled == 2


def test_dynamic_batching_and_full_queue(store, running_server):
    engine = ScriptedEngine(step_s=0.05)
    with running_server(create_app(engine, store, ServeConfig(max_batch=4, max_queue=64))) as server:
        with ThreadPoolExecutor(8) as pool:
            codes = [r.status_code for r in pool.map(lambda _: chat(server.url), range(8))]
    assert codes == [200] * 8 and max(engine.batches) >= 3 and len(engine.batches) < 8
    slow = ScriptedEngine(step_s=0.2)
    with running_server(create_app(slow, store, ServeConfig(max_batch=1, max_queue=1))) as server:
        with ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(lambda _: chat(server.url), range(5)))
    refused = [r for r in responses if r.status_code == 503]
    assert refused and all(r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"] for r in refused)
    assert [r.status_code for r in responses if r.status_code != 503] == [200] * (5 - len(refused))


def test_client_that_disconnects_frees_its_batch_row(store, running_server):
    engine = ScriptedEngine(" ".join(["word"] * 40), step_s=0.05)
    with running_server(create_app(engine, store)) as server:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions",
                          json={"model": "support", "messages": QUESTION, "stream": True}) as response:
            next(line for line in response.iter_lines() if '"content": "word"' in line)  # generation has started
        deadline = time.time() + 5
        while not engine.cancelled and time.time() < deadline:
            time.sleep(0.05)
    assert engine.cancelled == 1
    deadline = time.time() + 5
    while not store.conversations() and time.time() < deadline:
        time.sleep(0.05)
    answer = store.conversations()[0].messages[-1]
    assert answer.finish_reason == "cancelled" and 1 <= answer.content.count("word") < 40  # the partial answer is kept


def test_api_keys_sessions_and_ownership(store, running_server):
    config = ServeConfig(api_keys=["sk-shop-1"])
    with running_server(create_app(ScriptedEngine(), store, config)) as server:
        assert chat(server.url).status_code == 401
        wrong = chat(server.url, token="sk-wrong")
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert chat(server.url, token="sk-shop-1").status_code == 200
        session = httpx.post(f"{server.url}/v1/sessions").json()
        page_reply = chat(server.url, token=session["token"], metadata={"conversation_id": "page-1"})
        assert page_reply.status_code == 200
        forged = session["token"][:-2] + ("AA" if not session["token"].endswith("AA") else "BB")
        assert chat(server.url, token=forged).status_code == 401
        other = httpx.post(f"{server.url}/v1/sessions").json()["token"]
        steal = httpx.post(f"{server.url}/v1/feedback", headers={"Authorization": f"Bearer {other}"},
                           json={"completion_id": page_reply.json()["id"], "rating": "down"})
        assert steal.status_code == 404  # another session cannot rate (or read) this conversation
        hijack = chat(server.url, token=other, metadata={"conversation_id": "page-1"})
        assert hijack.status_code == 404
        own = httpx.post(f"{server.url}/v1/feedback", headers={"Authorization": f"Bearer {session['token']}"},
                         json={"completion_id": page_reply.json()["id"], "rating": "up"})
        assert own.status_code == 200
    channels = sorted(c.channel for c in store.conversations())
    assert channels == ["api", "web"]


def test_caller_and_rate_limit_are_checked_before_the_body(store, running_server):
    config = ServeConfig(api_keys=["sk-shop-1"], rate_limit_per_minute=1)
    with running_server(create_app(ScriptedEngine(), store, config)) as server:
        def post(body: bytes, token: str | None = None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers)

        assert post(b"{not json").status_code == 401
        assert post(b"{not json", "sk-shop-1").json()["error"]["code"] == "invalid_json"
        assert post(b"x" * 70_000, "sk-shop-1").status_code == 429  # the bad body above counted, this one is unread


def test_rate_limit_per_client(store, running_server):
    with running_server(create_app(ScriptedEngine(), store, ServeConfig(rate_limit_per_minute=3))) as server:
        codes = [chat(server.url).status_code for _ in range(4)]
        limited = chat(server.url)
    assert codes == [200, 200, 200, 429]
    assert limited.json()["error"]["type"] == "rate_limit_error" and int(limited.headers["retry-after"]) >= 1


def test_cors_is_off_by_default_and_configurable(store, running_server):
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with running_server(create_app(ScriptedEngine(), store)) as server:
        closed = httpx.options(f"{server.url}/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in closed.headers
    with running_server(create_app(ScriptedEngine(), store, ServeConfig(cors_origins=["https://shop.example"]))) as server:
        opened = httpx.options(f"{server.url}/v1/chat/completions", headers=preflight)
        assert opened.headers["access-control-allow-origin"] == "https://shop.example"
        assert chat(server.url).status_code == 200


def test_feedback_and_handoff_are_stored(store, running_server):
    with running_server(create_app(ScriptedEngine(), store)) as server:
        reply = chat(server.url, metadata={"conversation_id": "c-42"}).json()
        rated = httpx.post(f"{server.url}/v1/feedback", json={"completion_id": reply["id"], "rating": "down",
                                                              "correction": "It ships tomorrow; write to ana@example.com"})
        assert rated.status_code == 200
        assert httpx.post(f"{server.url}/v1/feedback", json={"completion_id": "chatcmpl-none", "rating": "up"}).status_code == 404
        assert httpx.post(f"{server.url}/v1/feedback", json={"completion_id": reply["id"], "rating": "meh"}).status_code == 400
        handoff = httpx.post(f"{server.url}/v1/handoff", json={"conversation_id": "c-42", "note": "call +44 20 7946 0958"})
        assert handoff.status_code == 200 and "team" in handoff.json()["message"]
        assert httpx.post(f"{server.url}/v1/handoff", json={"conversation_id": "c-missing"}).status_code == 404
    with store.sessions() as db:
        conversation = db.get(ConversationRow, "c-42")
        assert conversation.handoff_at is not None and conversation.handoff_note == "call [phone]"
        feedback = conversation.messages[-1].feedback
        assert (feedback.rating, feedback.correction) == (-1, "It ships tomorrow; write to [email]")


def test_web_page_is_served(store, running_server):
    with running_server(create_app(ScriptedEngine(), store)) as server:
        page = httpx.get(f"{server.url}/")
        assert page.status_code == 200 and 'id="messages"' in page.text and "/static/chat.js" in page.text
        assert "text/event-stream" not in page.text and httpx.get(f"{server.url}/static/chat.js").status_code == 200
    with running_server(create_app(ScriptedEngine(), store, ServeConfig(web=False))) as server:
        assert httpx.get(f"{server.url}/").status_code == 404
        assert httpx.post(f"{server.url}/v1/sessions").status_code in (404, 405)


def test_generation_failure_is_a_clean_500(store, running_server):
    class Broken(ScriptedEngine):
        def generate(self, *args, **kwargs):
            raise RuntimeError("secret internals")

    with running_server(create_app(Broken(), store)) as server:
        response = chat(server.url)
        streamed = chat(server.url, stream=True)
        assert chat(server.url).status_code == 500  # the worker survives the failure
    assert response.status_code == 500 and response.json()["error"]["message"] == "internal server error"
    assert "secret" not in response.text and "secret" not in streamed.text
    assert json.loads(sse_events(streamed)[-2])["error"]["type"] == "server_error"
