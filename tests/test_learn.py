"""`ecombot learn`: reviewed feedback -> the next adapter version, trained from the live one with replay, promoted only
by the guard rule; versions, rollback, a kill mid-run, knowledge-base contradictions, and serve swapping versions."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ecombot.learn.loop as loop
from ecombot.data import Conversation
from ecombot.knowledge import Grounder, Passage
from ecombot.learn import learn, rollback, versions
from ecombot.learn.feedback import feedback_round
from ecombot.run_dir import RunDir
from ecombot.serve.store import Answer, ReviewedAnswer, Store
from ecombot.train import train
from fake_knowledge import HANDOFF, RETURN_PAIR, RETURNS, SHIPPING, FakeRetriever
from test_train import tiny_config

CORRECTION = "Yes: returns are free within 60 days of delivery; start one on the Returns page of your account."


@pytest.fixture()
def base_run(tiny_model_dir, small_dataset, tmp_path) -> Path:
    run = tmp_path / "support"
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=12), show_progress=False)
    return run


def give_feedback(store: Store, adapter: str, questions: list[str], answer: str = CORRECTION,
                  version: str | None = "v1") -> list[int]:
    """Each question answered wrongly by `adapter`, corrected by the customer, the correction approved."""
    ids = []
    for question in questions:
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        store.record_answer(None, "client-1", "api", [{"role": "user", "content": question}],
                            Answer(completion, "No, sorry.", adapter, 5.0, 4, 3, "stop", version=version))
        store.record_feedback(completion, "client-1", -1, answer)
        suggestion = store.pending_suggestions()[-1]
        store.review(suggestion.id, True, "cli:test")
        ids.append(suggestion.id)
    return ids


def questions(n: int, start: int = 0) -> list[str]:
    return [f"Can I send back the item from order {1000 + i}?" for i in range(start, start + n)]


def test_learn_trains_the_next_version_from_the_live_one_and_applies_the_promotion_rule(base_run):
    store = Store()
    give_feedback(store, "support", questions(10))
    give_feedback(store, "another-bot", questions(3, 50))  # another adapter's feedback is not this one's
    said = []
    result = learn(base_run, say=said.append)

    assert result.version == "v2"
    assert len(result.feedback.train) == 8 and len(result.feedback.held_out) == 2  # a fifth held out for ever
    record = versions(base_run)["versions"][-1]
    # 9 per feedback item, as many as the first training's split holds (none of it asks the feedback's questions)
    pool = len(RunDir(base_run).train_split().read_text().splitlines())
    replayed = min(pool, loop.Recipe.replay_per_item * 8)
    assert record["parent"] == "v1" and record["steps"] == loop.learn_steps(8 + replayed, 4)
    assert record["replayed"] == replayed > loop.MIN_REPLAY and record["guard_items"] > 0
    assert record["passes"] == round(record["steps"] * 4 / (8 + replayed), 2)
    # trained with the recipe's pull toward the live version's weights (the trainer's test checks what it does)
    v2 = json.loads((base_run / "versions" / "v2" / "run_config.json").read_text())["config"]
    assert record["parent_l2"] == v2["parent_l2"] == loop.Recipe.parent_l2 > 0 and v2["init_adapter"]
    scores = record["scores"]
    # Trained on eight corrections of one kind, the two it never saw are answered far better: the slice improves.
    assert scores["feedback"]["candidate"]["loss"] < scores["feedback"]["parent"]["loss"] * 0.9
    assert all(0 <= scores[s][v]["sure"] <= 1 for s in scores for v in ("parent", "candidate"))
    promoted = scores["guard"]["candidate"]["sure"] >= scores["guard"]["parent"]["sure"] - loop.GUARD_SURE_DROP
    assert result.promoted == promoted and record["status"] == ("live" if promoted else "rejected")
    assert "feedback slice loss" in record["reason"] and any("v2" in line for line in said)
    assert (base_run / "versions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    candidate = RunDir(base_run / "versions" / "v2")
    assert candidate.status() == "complete" and candidate.info()["config"]["init_adapter"] == str(base_run)
    trained = loop.learn_data_path(RunDir(base_run), "v2").read_text()
    assert trained.count(CORRECTION) == 8  # the held-out two never reach training

    # Nothing new: nothing trained.
    again = learn(base_run, say=said.append)
    assert again.version is None and "no new reviewed feedback" in again.reason


def test_a_recipe_that_repeats_feedback_trains_each_correction_that_many_times_a_pass(base_run):
    give_feedback(Store(), "support", questions(10))
    said = []
    learn(base_run, say=said.append, recipe=loop.Recipe(feedback_repeats=3))
    record = versions(base_run)["versions"][-1]
    replayed = min(len(RunDir(base_run).train_split().read_text().splitlines()), loop.Recipe.replay_per_item * 8)
    assert record["feedback_repeats"] == 3 and record["steps"] == loop.learn_steps(8 * 3 + replayed, 4)
    assert record["passes"] == round(record["steps"] * 4 / (8 * 3 + replayed), 2)
    v2 = json.loads((base_run / "versions" / "v2" / "run_config.json").read_text())["config"]
    assert v2["emphasis"] == 3 and Path(v2["emphasised"]).read_text().count(CORRECTION) == 8
    # the repeated items are the data's own questions, which training matches them by
    emphasised = {json.loads(line)["messages"][0]["content"] for line in Path(v2["emphasised"]).open()}
    trained = {json.loads(line)["messages"][0]["content"] for line in Path(v2["data"]).open()}
    assert len(emphasised) == 8 and emphasised <= trained
    assert any("8 feedback (each 3 times)" in line for line in said)


def test_a_promoted_version_is_what_every_command_loads_and_rollback_restores_the_first(base_run, monkeypatch):
    from ecombot.models import load_for_inference

    monkeypatch.setattr(loop, "GUARD_SURE_DROP", 1.0)  # promote whenever the feedback slice improves
    store = Store()
    give_feedback(store, "support", questions(10))
    assert learn(base_run, say=lambda _: None).promoted
    assert versions(base_run)["live"] == "v2" and RunDir(base_run).live().path == base_run / "versions" / "v2"
    loaded = load_for_inference(adapter=base_run)
    assert loaded.adapter_version == "v2"
    live_lora = {k: v for k, v in loaded.model.state_dict().items() if "lora_A" in k}
    saved = load_file(str(base_run / "versions" / "v2" / "adapter_model.safetensors"))
    some = next(k for k in saved if "lora_A" in k)
    match = next(v for k, v in live_lora.items() if k.replace(".default", "") == some)
    assert torch.equal(match.float(), saved[some].float())

    # A second round trains from v2, and v2's held-out feedback joins the guard set.
    import ecombot.evaluate

    give_feedback(store, "support", questions(10, 20), version="v2")
    scored, stats = [], ecombot.evaluate.answer_token_stats

    def counting(model, tokenizer, convs, *rest):
        scored.append((model.active_adapter, len(convs)))
        return stats(model, tokenizer, convs, *rest)

    monkeypatch.setattr(ecombot.evaluate, "answer_token_stats", counting)
    second = learn(base_run, say=lambda _: None)
    guard_items = second.record["guard_items"]
    # As round 1's candidate v2 was scored on that guard set and on its slice, the 2 held-out items that join the
    # guard now: as the parent it is scored on this round's new slice alone.
    assert scored == [("candidate", guard_items), ("parent", 2), ("candidate", 2)]
    kept = json.loads((base_run / "versions" / "v2" / "item_scores.json").read_text())
    assert len(kept["items"]) == guard_items + 2
    first_split = loop.guard_set(RunDir(base_run), [], set(), {})[0]
    assert all(loop.VersionScores.key(None, c) in kept["items"] for c in first_split)
    assert kept["scorer"]["precision"] == loaded.precision
    assert second.record["parent"] == "v2" and second.version == "v3"
    first_lr = json.loads((base_run / "run_config.json").read_text())["config"]["learning_rate"]
    assert second.record["learning_rate"] == versions(base_run)["versions"][1]["learning_rate"]
    assert second.record["learning_rate"] == first_lr * loop.Recipe.lr_factor
    assert second.record["guard_items"] == versions(base_run)["versions"][1]["guard_items"] + 2
    assert RunDir(base_run / "versions" / "v3").info()["config"]["init_adapter"] == str(base_run / "versions" / "v2")

    rollback(base_run, "v1")
    lineage = versions(base_run)
    assert lineage["live"] == "v1" and {v["name"]: v["status"] for v in lineage["versions"]}["v3"] == "retired"
    assert load_for_inference(adapter=base_run).adapter_version == "v1"
    with pytest.raises(Exception, match="no version 'v9'"):
        rollback(base_run, "v9")


def test_a_rejected_candidate_stays_out_and_its_feedback_is_tried_again(base_run, monkeypatch):
    monkeypatch.setattr(loop, "GUARD_SURE_DROP", -1.0)  # the floor is above 100%: always rejected
    store = Store()
    give_feedback(store, "support", questions(10))
    result = learn(base_run, say=lambda _: None)
    lineage = versions(base_run)
    assert not result.promoted and lineage["live"] == "v1" and lineage["versions"][-1]["status"] == "rejected"
    assert "guard tokens sure of" in result.reason and "regressed" in result.reason
    assert RunDir(base_run).live().path == base_run
    # The rejected round's training items come back next time; its held-out ones stay held out.
    monkeypatch.setattr(loop, "GUARD_SURE_DROP", 1.0)
    retry = learn(base_run, say=lambda _: None)
    assert retry.version == "v3" and retry.record["parent"] == "v1"
    assert sorted(retry.feedback.used_ids) == sorted(result.feedback.used_ids)
    assert not set(retry.feedback.used_ids) & set(result.feedback.held_out_ids)


def test_learn_killed_mid_run_leaves_the_live_version_alone_and_a_rerun_completes(base_run, tmp_path):
    store = Store()
    give_feedback(store, "support", questions(10))
    env = {**os.environ, "ECOMBOT_SPEEDUPS": os.environ.get("ECOMBOT_SPEEDUPS", "1")}
    command = [sys.executable, "-m", "ecombot", "learn", "--adapter", str(base_run)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    candidate = base_run / "versions" / "v2"
    deadline = time.time() + 120
    while not (candidate / "train_log.jsonl").is_file():  # training has begun
        assert process.poll() is None, process.stdout.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert versions(base_run)["live"] == "v1" and not (base_run / "versions.json").exists()
    assert RunDir(base_run).live().path == base_run

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lineage = versions(base_run)
    assert [v["name"] for v in lineage["versions"]] == ["v1", "v2"]
    assert RunDir(candidate).status() == "complete"


def test_store_gives_reviewed_answers_by_adapter_and_date_with_the_version_that_answered():
    store = Store()
    give_feedback(store, "support", questions(2), version="v3")
    give_feedback(store, "other", questions(1, 9))
    found = store.reviewed_answers("support")
    assert [r.version for r in found] == ["v3", "v3"] and all(r.corrected for r in found)
    assert found[0].messages == [{"role": "user", "content": questions(1)[0]},
                                 {"role": "assistant", "content": CORRECTION}]
    assert found[0].generated == "No, sorry."
    assert len(store.reviewed_answers()) == 3
    later = found[-1].reviewed_at.replace(year=found[-1].reviewed_at.year + 1)
    assert store.reviewed_answers("support", since=later) == []
    unreviewed = f"chatcmpl-{uuid.uuid4().hex}"
    store.record_answer(None, "c", "api", [{"role": "user", "content": "hi"}],
                        Answer(unreviewed, "Hello", "support", 1.0, 1, 1, "stop"))
    store.record_feedback(unreviewed, "c", 1, None)
    assert len(store.reviewed_answers("support")) == 2  # waiting for review: not training data


def reviewed(feedback_id: int, question: str, generated: str, approved: str) -> ReviewedAnswer:
    from datetime import datetime, timezone

    return ReviewedAnswer(feedback_id, [{"role": "user", "content": question},
                                        {"role": "assistant", "content": approved}],
                          "support", "v1", generated, datetime.now(timezone.utc))


def test_a_correction_the_store_documents_contradict_goes_to_the_knowledge_base_not_the_weights():
    grounder = Grounder(FakeRetriever(), k=2)  # RETURNS: "Unworn shoes can be returned within 30 days."
    items = [
        reviewed(1, "Can I return my shoes?", "Yes, within 30 days.", "Yes, within 60 days of delivery."),
        reviewed(2, "Can I return unworn shoes?", "Within 14 days.", "Yes, within 30 days."),  # agrees with the doc
        reviewed(3, "Can I return these shoes?", "Yes, within 30 days.", "Yes, within 30 days, unworn."),  # no change
        reviewed(4, "Do you sell gift cards?", "Yes, $10 ones.", "Yes, $25 ones."),  # not covered: nothing to edit
    ]
    found = feedback_round(items, set(), set(), seed=0, grounder=grounder)
    assert [c.feedback_id for c in found.contradictions] == [1]
    clash = found.contradictions[0]
    assert clash.answer_says == ["60 day"] and clash.passage_says == ["30 day"]
    assert clash.passage["source"] == "policy.md" and clash.passage["line"] == 3
    assert "policy.md > Policies > Returns and exchanges (line 3)" in clash.describe()
    assert sorted(c.meta["feedback_id"] for c in found.train + found.held_out) == [2, 3, 4]
    # Used or held out before: not offered again.
    again = feedback_round(items, {2}, {3}, seed=0, grounder=None)
    assert sorted(c.meta["feedback_id"] for c in again.train) == [1, 4] and again.already_used == 2


def test_an_added_fact_the_store_documents_state_otherwise_is_trained_on_and_said():
    """An agent's answer to a handoff (the bot's answer stated no value) gives a return window the policy page states
    otherwise: trained on as approved (nothing tells which is out of date) and said with the passage to edit; one the
    page states too, or one no document states a value of, is not (a Q&A pair's values are its own question's)."""
    free_over = Passage("policy.md", "Policies > Shipping costs", 12, "Shipping is free on parcels over $50.")
    grounder = Grounder(FakeRetriever((RETURN_PAIR, RETURNS, SHIPPING, free_over)), k=4)
    items = [
        reviewed(1, "Can I return my shoes?", HANDOFF, "Yes, within 60 days, unworn."),
        reviewed(2, "Can I return unworn shoes?", HANDOFF, "Yes, within 30 days."),  # what the page says
        reviewed(3, "Can I return shoes I bought?", HANDOFF, "Yes, order number and all."),  # states no value
        reviewed(4, "Do my shoes ship fast?", HANDOFF, "Yes, for $25 more."),  # no document states a price
        # the first document found is the returns one: the shipping page's $50 is about something else
        reviewed(5, "Can I return unworn shoes if shipping was free?", HANDOFF,
                 "Yes, within 30 days; a return label costs $5."),
    ]
    found = feedback_round(items, set(), set(), seed=0, grounder=grounder)
    assert found.contradictions == [] and [c.feedback_id for c in found.to_check] == [1]
    check = found.to_check[0]
    assert (check.answer_says, check.passage_says, check.passage["line"]) == (["60 day"], ["30 day"], 3)
    assert "adds 60 day where policy.md > Policies > Returns and exchanges (line 3) says 30 day" in check.describe()
    assert sorted(c.meta["feedback_id"] for c in found.train + found.held_out) == [1, 2, 3, 4, 5]
    assert check.held_out == (1 in found.held_out_ids)
    assert ("held out as the feedback slice" if check.held_out else "trained on as approved") in check.describe()


def perturbed_version(run: Path, version: str) -> Path:
    """A copy of the run as `version`, its LoRA B weights changed so its answers differ."""
    target = run / "versions" / version
    target.parent.mkdir(exist_ok=True)
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("versions", "checkpoints"))
    weights = load_file(str(target / "adapter_model.safetensors"))
    save_file({k: (v + 0.5 if "lora_B" in k else v) for k, v in weights.items()},
              str(target / "adapter_model.safetensors"))
    return target


def promote(run: Path, version: str) -> None:
    lineage = RunDir(run).lineage()
    lineage["versions"].append({"name": version, "parent": lineage["live"], "status": "live"})
    lineage["live"] = version
    RunDir(run).write_lineage(lineage)


def test_the_engine_swaps_in_a_promoted_version_after_the_batch_in_flight(base_run):
    from ecombot.chat import Decoding, TransformersEngine
    from ecombot.models import load_for_inference

    loaded = load_for_inference(adapter=base_run, adapter_name="support", precision="fp32")
    engine = TransformersEngine(loaded, None, Decoding(max_new_tokens=40))
    ask = [[{"role": "user", "content": "Where is my order?"}]]
    prompt = torch.tensor([engine.prompt_ids(ask[0], "support")])

    def logits():
        with torch.no_grad(), engine.using("support"):
            return loaded.model(input_ids=prompt).logits[0, -1]

    before = engine.generate(ask, "support", Decoding(max_new_tokens=4))[0]
    assert before.version == "v1" and engine.reload_promoted() == {}
    first = logits()

    perturbed_version(base_run, "v2")
    promote(base_run, "v2")
    started, finished = threading.Event(), {}

    def streamed(row, text):
        finished["last_text"] = time.monotonic()  # inside the batch, before it lets go of the engine
        started.set()

    def long_answer():
        finished["generate"] = engine.generate(ask, "support", Decoding(max_new_tokens=40, repetition_penalty=1.0),
                                               on_text=streamed)[0]

    worker = threading.Thread(target=long_answer)
    worker.start()
    assert started.wait(30)
    assert engine.reload_promoted() == {"support": "v2"}
    finished["reload"] = time.monotonic()
    worker.join(30)
    in_flight = finished["generate"]
    # the batch in flight streamed its last text, on v1, before the swap
    assert in_flight.version == "v1" and finished["last_text"] <= finished["reload"]
    after = engine.generate(ask, "support", Decoding(max_new_tokens=4))[0]
    assert after.version == "v2" and not torch.allclose(logits(), first, atol=1e-3)
    assert engine.version("support") == "v2" and engine.version("base") is None


def test_serve_answers_with_a_promoted_version_without_a_restart_and_stores_it(base_run, running_server):
    import httpx

    from ecombot.chat import Decoding
    from ecombot.config.serve import ServeConfig
    from ecombot.serve import create_app
    from ecombot.chat import open_engine

    engine = open_engine(None, [("support", base_run)], Decoding(max_new_tokens=8), precision="fp32")
    store = Store()
    app = create_app(engine, store, ServeConfig(reload_every_s=0.1, rate_limit_per_minute=0))
    body = {"model": "support", "messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 8}
    with running_server(app) as server:
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        perturbed_version(base_run, "v2")
        promote(base_run, "v2")
        deadline = time.time() + 20
        while engine.version("support") != "v2":
            assert time.time() < deadline, "serve did not pick up the promoted version"
            time.sleep(0.05)
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    stored = [m.version for c in store.conversations() for m in c.messages if m.role == "assistant"]
    assert stored == ["v1", "v2"]


def test_the_cli_lists_versions_and_rolls_back(base_run, monkeypatch):
    from typer.testing import CliRunner

    from ecombot import cli
    from ecombot.cli import app

    monkeypatch.setattr(cli.console, "width", 250)
    monkeypatch.setattr(loop, "GUARD_SURE_DROP", 1.0)
    give_feedback(Store(), "support", questions(6))
    runner = CliRunner()
    dry = runner.invoke(app, ["learn", "--adapter", str(base_run), "--dry-run"])
    assert dry.exit_code == 0 and "dry run" in dry.output and not (base_run / "versions.json").exists()
    harder = runner.invoke(app, ["learn", "--adapter", str(base_run), "--dry-run", "--feedback-repeats", "3"])
    assert harder.exit_code == 0 and "5 feedback (each 3 times)" in harder.output and "(each" not in dry.output
    assert runner.invoke(app, ["learn", "--adapter", str(base_run)]).exit_code == 0
    listed = runner.invoke(app, ["adapter", "versions", str(base_run)])
    assert listed.exit_code == 0 and "v2 is live" in listed.output and "retired" in listed.output
    back = runner.invoke(app, ["adapter", "rollback", str(base_run), "v1"])
    assert back.exit_code == 0 and "v1 is live" in back.output
    assert json.loads((base_run / "versions.json").read_text())["live"] == "v1"


def test_a_second_learn_on_the_same_adapter_is_refused_while_one_runs(base_run):
    from ecombot.errors import EcombotError

    give_feedback(Store(), "support", questions(6))
    with loop.only_learn_running(RunDir(base_run)):
        with pytest.raises(EcombotError, match="another `ecombot learn` is running"):
            learn(base_run, say=lambda _: None)
    assert learn(base_run, say=lambda _: None, dry_run=True).reason.startswith("dry run")


def test_a_changed_policy_leaves_replay_and_guard_without_the_old_value(base_run):
    """Agents correct '1 hour' to '2 hours' (the cancellation window changed): no replayed conversation teaches the
    old window again, and guard items stating it are set aside (counted), not held against the new version."""
    from ecombot.data import read_file
    from ecombot.learn.feedback import states_superseded, superseded

    store = Store()
    for i, question in enumerate(questions(8)):
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        store.record_answer(None, "c", "api", [{"role": "user", "content": f"How long can I cancel order {i}?"}],
                            Answer(completion, "You can cancel within 1 hour of ordering.", "support", 1.0, 1, 1,
                                   "stop", version="v1"))
        store.record_feedback(completion, "c", -1, "You can cancel within 2 hours of ordering.")
        store.review(store.pending_suggestions()[-1].id, True, "cli:test")
    result = learn(base_run, say=lambda _: None)
    old = superseded(result.feedback.train)
    assert old == {"quantity:hour": {"1 hour"}}
    replayed = read_file(loop.learn_data_path(RunDir(base_run), "v2")).conversations
    assert not any(states_superseded(c, old) for c in replayed)
    test = read_file(base_run / "data" / "test.jsonl").conversations
    stale = sum("1 hour" in c.answer for c in test)
    assert stale > 0 and result.record["guard_out_of_date"] == stale
    assert result.record["guard_items"] == len(test) - stale
    assert result.record["superseded_values"] == {"quantity:hour": ["1 hour"]}
    unchanged = Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Open 24 hours."}])
    assert not states_superseded(unchanged, old)


def test_sure_tokens_are_the_answer_tokens_the_model_gives_more_than_half_its_probability(tiny_model_dir,
                                                                                          small_dataset):
    from transformers import AutoModelForCausalLM

    from ecombot.data import read_file
    from ecombot.evaluate import answer_token_stats
    from ecombot.models import PadCollator, encode_conversations, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    convs = read_file(small_dataset).conversations[:5]
    with torch.no_grad():  # the answer tokens' greedy-relevant probabilities straight from the model's logits
        model.get_output_embeddings().weight[5] *= 40  # one token made likely everywhere: some answer tokens are sure
        batch = PadCollator(tokenizer.pad_token_id)(encode_conversations(convs, tokenizer, None, 1024).examples)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        probs = logits.float().softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        expected = ((probs > 0.5) & (labels != -100)).sum(1).numpy()
    sums, counts, sure = answer_token_stats(model, tokenizer, convs, None)
    assert list(sure) == list(expected) and (sure <= counts).all() and (counts > 0).all()
    assert 0 < sure.sum() < counts.sum()


def test_kept_scores_count_only_for_the_same_scorer_and_a_damaged_file_is_a_miss(tmp_path):
    from types import SimpleNamespace

    run = RunDir(tmp_path)
    here = SimpleNamespace(device="cpu", precision="bf16", model_dir=tmp_path / "model")
    item = Conversation([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}])
    kept = loop.VersionScores(run, here)
    kept.known[kept.key(None, item)] = [1.0, 2.0, 1.0]
    run.item_scores_file.write_text(json.dumps({"scorer": kept.scorer, "items": kept.known}))
    assert loop.VersionScores(run, here).known == kept.known
    elsewhere = SimpleNamespace(device="cpu", precision="fp32", model_dir=tmp_path / "model")
    assert loop.VersionScores(run, elsewhere).known == {}  # scored in bf16: not this scorer's numbers
    run.item_scores_file.write_text('{"scorer": ')
    assert loop.VersionScores(run, here).known == {}


def test_learn_on_a_support_run_with_a_catalog_replays_its_product_questions_and_adds_none(
        tiny_model_dir, small_dataset, tmp_path, write_catalog):
    """A support run trained with `--catalog`: its next version reads the same knowledge base (the catalog's passages
    stay, not added again) and learns from feedback and replay only: the product questions it trains on are the
    replayed ones of the first training, none made anew (the base's catalog is not read again)."""
    from ecombot.catalog import read_catalog
    from ecombot.catalog.questions import PRODUCT_QUESTIONS
    from ecombot.data import read_file
    from ecombot.knowledge import KnowledgeBase

    catalog = write_catalog(tmp_path / "products.jsonl", read_catalog("builtin")[:40])
    db = f"sqlite:///{tmp_path / 'kb.db'}"
    run = tmp_path / "support"
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=4, knowledge="shop", db=db, catalog=str(catalog)),
          show_progress=False)
    first = [c for c in read_file(run / "data" / "train.jsonl").conversations if c.category == PRODUCT_QUESTIONS]
    assert first
    give_feedback(Store(), "support", questions(10))

    result = learn(run, say=lambda line: None)

    assert result.version == "v2"
    v2 = RunDir(run / "versions" / "v2")
    assert v2.status() == "complete" and v2.info()["config"]["catalog"] is None
    trained = read_file(loop.learn_data_path(RunDir(run), "v2")).conversations
    replayed = [c for c in trained if c.category == PRODUCT_QUESTIONS]
    assert {c.question for c in replayed} <= {c.question for c in first}
    v2_split = read_file(v2.data_dir / "train.jsonl").conversations
    assert sum(c.category == PRODUCT_QUESTIONS for c in v2_split) == len(replayed)
    sources = {s.name: s.passages for s in KnowledgeBase(db, "shop").sources()}
    assert sources["catalog: products.jsonl"] == 40
    assert "catalog: products.jsonl" in v2.info()["knowledge"]["sources"]
