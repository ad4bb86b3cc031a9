"""API fuzzing with Schemathesis against the live app's OpenAPI schema (loopback, scripted engine).

Whatever a client sends, valid or not, the server answers without a 5xx, and every error has OpenAI's shape.
Each operation of the schema gets valid and invalid requests from Hypothesis strategies, sent with a review key
and with an anonymous page session (Schemathesis's pytest plugin is not used: it does not run on pytest 9).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from conftest import RunningServer
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from scripted_engine import ScriptedEngine

from ecombot.serve import ServeConfig, Store, create_app

REVIEW_KEY = "sk-agent"
EXAMPLES_PER_OPERATION_AND_MODE = 25
BODIES = {("/v1/chat/completions", "post"): "ChatCompletionRequest", ("/v1/feedback", "post"): "FeedbackRequest",
          ("/v1/handoff", "post"): "HandoffRequest", ("/v1/reviews/{suggestion_id}", "post"): "ReviewRequest",
          ("/v1/handoffs/{conversation_id}/answer", "post"): "HandoffAnswerRequest",
          ("/v1/handoffs/{conversation_id}/close", "post"): "HandoffCloseRequest"}


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}")
    config = ServeConfig(api_keys=["sk-shop-1"], review_keys=[REVIEW_KEY], rate_limit_per_minute=0)
    with RunningServer(create_app(ScriptedEngine(), store, config)) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    """The schema as the running server publishes it; its cases are sent to that server."""
    return schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")


def openai_shaped_error(ctx, response, case) -> None:
    """Every 4xx/5xx body is `{"error": {"message", "type", "param", "code"}}` with a message and a type."""
    if response.status_code < 400:
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), error


def with_the_served_model(case):
    """Generated model names almost never exist (a 404 before any generation): name the served one, so that
    the answer's path (batcher, placeholders, stop sequences, store) is fuzzed too."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = "support"
    return case


def test_the_schema_describes_every_json_body(api_schema):
    raw = api_schema.raw_schema
    for (path, method), model in BODIES.items():
        body = raw["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
    assert "messages" in raw["components"]["schemas"]["ChatCompletionRequest"]["properties"]


@pytest.mark.parametrize("who", ["review key", "page session"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_5xx_and_errors_are_openai_shaped(fuzzed_server, api_schema, mode, who):
    token = REVIEW_KEY if who == "review key" else httpx.post(f"{fuzzed_server.url}/v1/sessions").json()["token"]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(op.path, op.method.lower()) for op in operations} >= set(BODIES)
    for operation in operations:
        described = api_schema.raw_schema["paths"][operation.path][operation.method.lower()]
        if mode is GenerationMode.NEGATIVE and not ("requestBody" in described or described.get("parameters")):
            continue  # nothing in the request to get wrong (GET /health, POST /v1/sessions)

        @given(case=operation.as_strategy(generation_mode=mode).map(with_the_served_model))
        @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            case.validate_response(response, checks=[not_a_server_error, openai_shaped_error])

        fuzz()
