"""The conversation store on SQLite and on a real PostgreSQL server; redaction; export back to training data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from ecombot.serve.redact import luhn_valid, redact
from ecombot.serve.store import Answer, NotFound, Store

REQUIRE_SYSTEM = os.environ.get("ECOMBOT_REQUIRE_SYSTEM_TESTS") == "1"


def postgres_url() -> str:
    url = os.environ.get("ECOMBOT_TEST_POSTGRES_URL")
    if not url:
        if REQUIRE_SYSTEM:
            pytest.fail("ECOMBOT_TEST_POSTGRES_URL is not set (.ci/postgres-up prints it)")
        pytest.skip("no PostgreSQL: run .ci/postgres-up and set ECOMBOT_TEST_POSTGRES_URL (CI always does)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path / 'store.db'}")
        return
    from sqlalchemy import create_engine, text

    schema = f"test_{uuid.uuid4().hex[:12]}"  # a fresh schema per test on the shared server
    admin = create_engine(postgres_url())
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = postgres_url() + ("&" if "?" in postgres_url() else "?") + f"options=-csearch_path%3D{schema}"
    store = Store(url)
    assert store.engine.dialect.name == "postgresql"
    yield store
    store.engine.dispose()
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def answer(text: str, completion_id: str | None = None) -> Answer:
    return Answer(completion_id or f"chatcmpl-{uuid.uuid4().hex}", text, "support", 12.5, 30, 8, "stop")


def test_redaction_of_emails_phones_and_cards():
    text = ("Mail ana.b+shop@example.co.uk, call +44 20 7946 0958 or (555) 123-4567 or 5551234567; "
            "card 4111 1111 1111 1111. Order 12345678 from 2026-11-26, 26.11.2026, total 1,299.99, "
            "not a card: 4111-1111-1111-1112.")
    assert redact(text) == ("Mail [email], call [phone] or [phone] or [phone]; card [card]. Order 12345678 from "
                            "2026-11-26, 26.11.2026, total 1,299.99, not a card: 4111-1111-1111-1112.")
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_answers_conversations_and_feedback_round_trip(store, tmp_path):
    first = answer("Your order {{Order Number}} ships today.")
    conversation = store.record_answer(None, "key-a", "api", [{"role": "user", "content": "Where is order 55, ana@x.org?"}], first)
    history = [{"role": "user", "content": "Where is order 55, ana@x.org?"},
               {"role": "assistant", "content": "Your order {{Order Number}} ships today."},
               {"role": "user", "content": "Can I change the address?"}]
    second = answer("Yes, within one hour of ordering.")
    assert store.record_answer(conversation, "key-a", "api", history, second) == conversation
    with pytest.raises(NotFound):
        store.record_answer(conversation, "key-b", "api", history, answer("x"))
    with pytest.raises(NotFound):
        store.record_feedback(first.completion_id, "key-b", 1, None)
    store.record_feedback(first.completion_id, "key-a", -1, None)
    store.record_feedback(first.completion_id, "key-a", 1, None)  # the latest rating counts
    store.record_feedback(second.completion_id, "key-a", -1, "Only before it ships: call 020 7946 0958.")
    third = answer("We ship worldwide.")
    store.record_answer(None, "key-a", "web", [{"role": "user", "content": "Do you ship to Peru?"}], third)
    store.record_feedback(third.completion_id, "key-a", -1, None)
    store.record_answer(None, "key-a", "web", [{"role": "user", "content": "Unrated question"}], answer("Unrated."))
    store.record_handoff(conversation, "key-a", "wants a person")

    rows = store.conversations()
    assert [len(c.messages) for c in rows] == [4, 2, 2] and rows[0].handoff_note == "wants a person"
    assert rows[0].messages[0].content == "Where is order 55, [email]?"
    assert [m.position for m in rows[0].messages] == [0, 1, 2, 3]

    rated = store.export(tmp_path / "rated.jsonl", rated_only=True)
    assert rated.written == 2 and rated.skipped == {"thumbs down without a correction": 1}
    records = [json.loads(line) for line in (tmp_path / "rated.jsonl").read_text().splitlines()]
    stored = [{**history[0], "content": "Where is order 55, [email]?"}, *history[1:]]
    assert records[0]["messages"] == stored[:2]
    assert records[1]["messages"] == stored + [{"role": "assistant", "content": "Only before it ships: call [phone]."}]
    everything = store.export(tmp_path / "all.jsonl", rated_only=False)
    assert everything.written == 3 and everything.skipped == {}


def test_export_cli_writes_data_that_train_reads(tmp_path):
    from typer.testing import CliRunner

    from ecombot.cli import app
    from ecombot.data import load_conversations

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    for i in range(3):
        reply = answer(f"Answer {i}.")
        store.record_answer(None, "key-a", "web", [{"role": "user", "content": f"Question {i}?"}], reply)
        store.record_feedback(reply.completion_id, "key-a", 1 if i else -1, None if i else "Corrected answer 0.")
    result = CliRunner().invoke(app, ["conversations", "export", "--rated", "--db", url, "--output", str(tmp_path / "f.jsonl")])
    assert result.exit_code == 0 and "wrote 3 conversation(s)" in result.output
    conversations, report = load_conversations(tmp_path / "f.jsonl")
    assert report.kept == 3 and conversations[0].answer == "Corrected answer 0."


def test_exported_text_with_unicode_line_breaks_trains(tmp_path):
    """Customers paste U+2028/U+2029/U+0085; the export keeps them raw (valid JSON) and `train`'s reader keeps them."""
    from ecombot.data import prepare

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    texts = ["Line one\u2028line two", "Para\u2029graph", "Next\u0085line", "Steps:\n1. Log in\n2. Pay",
             'A "quote" \\ \U0001F600']
    for text in texts:
        question = [{"role": "user", "content": f"About: {text}"}]
        store.record_answer(None, "key-a", "web", question, answer(f"Re: {text}"))
    store.export(tmp_path / "all.jsonl", rated_only=False)
    train = prepare(tmp_path / "all.jsonl", val_fraction=0, test_fraction=0).split.train
    assert sorted((c.question, c.answer) for c in train) == sorted((f"About: {t}", f"Re: {t}") for t in texts)


def test_nul_characters_are_dropped_not_fatal(store):
    """PostgreSQL's text type cannot hold U+0000: a customer's message with one failed the whole answer (HTTP 500)."""
    reply = answer("Sure\x00.")
    store.record_answer(None, "key-a", "api", [{"role": "user", "content": "Hi\x00 there"}], reply)
    store.record_feedback(reply.completion_id, "key-a", -1, "Better\x00 answer")
    messages = store.conversations()[0].messages
    assert [m.content for m in messages] == ["Hi there", "Sure."] and messages[1].feedback.correction == "Better answer"


def test_redaction_can_be_switched_off(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'raw.db'}", redact_text=False)
    store.record_answer(None, "c", "api", [{"role": "user", "content": "me@x.org"}], answer("ok"))
    assert store.conversations()[0].messages[0].content == "me@x.org"


def test_a_killed_server_keeps_every_answer_it_sent(tmp_path, talkative_model_dir):
    """`ecombot serve` in its own process, SIGKILLed right after answering: the answer is in the database."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    db = tmp_path / "crash.db"
    env = {**os.environ, "ECOMBOT_HOME": str(tmp_path / "home")}
    server = subprocess.Popen([sys.executable, "-m", "ecombot", "serve", "--model", str(talkative_model_dir),
                               "--port", str(port), "--db", f"sqlite:///{db}", "--default-max-tokens", "6"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.time() < deadline, "server did not start"
                time.sleep(0.2)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                           json={"model": "base", "messages": [{"role": "user", "content": "Hello"}]})
        assert reply.status_code == 200
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    [conversation] = Store(f"sqlite:///{db}").conversations()
    assert conversation.messages[-1].completion_id == reply.json()["id"]


@pytest.mark.skipif(shutil.which("pg_isready") is None and not REQUIRE_SYSTEM, reason="PostgreSQL client tools absent")
def test_postgres_url_is_accepted_by_the_cli_store(tmp_path):
    from typer.testing import CliRunner

    from ecombot.cli import app

    result = CliRunner().invoke(app, ["conversations", "export", "--db", postgres_url(), "--output", str(tmp_path / "pg.jsonl")])
    assert result.exit_code == 0, result.output
