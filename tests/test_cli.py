import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from fake_knowledge import COVERED, HANDOFF, NOT_COVERED, grounded_run, knowledge_bases  # noqa: F401
from scripted_engine import ScriptedEngine
from typer.testing import CliRunner

from ecombot.cli import app
from ecombot.data import builtin_path
from ecombot.knowledge import REUSE_THRESHOLD

runner = CliRunner()


def ecombot(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ecombot", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("command", [[], ["data"], ["data", "inspect"], ["data", "split"], ["train"], ["chat"],
                                     ["quickstart"], ["config"], ["evaluate"],
                                     ["adapter"], ["adapter", "inspect"], ["export"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_data_inspect_summary(tiny_model_dir):
    result = runner.invoke(app, ["data", "inspect", str(builtin_path()), "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "2477" in result.output and "chat-jsonl" in result.output and "p50" in result.output
    assert "longer than 1024" in result.output  # train's limit, so inspect counts what train will cut


def test_data_inspect_counts_a_ticket_exports_threads_not_its_rows(tmp_path):
    tickets = tmp_path / "tickets.csv"
    tickets.write_text("ticket_id,sender,message\nT1,customer,Where is it?\nT1,agent,Shipped.\nT1,customer,Thanks!\n"
                       "T2,customer,Gift wrap?\nT2,agent,Yes.\n")
    result = runner.invoke(app, ["data", "inspect", str(tickets), "--no-tokens"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert re.search(r"threads read\s*│\s*2\s", result.output) and "rows read" not in result.output


def test_bad_file_is_one_clear_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    result = ecombot("data", "inspect", bad, "--no-tokens")
    assert result.returncode == 1
    assert "bad.jsonl:line 2: field 'completion': missing required field" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_split_writes_the_same_split_as_training(tmp_path):
    out = tmp_path / "split"
    result = runner.invoke(app, ["data", "split", str(builtin_path()), "--output", str(out), "--seed", "42"])
    assert result.exit_code == 0, result.output
    assert "test questions also in train: 0" in " ".join(result.output.split())  # the console wraps long paths
    from ecombot.data import prepare

    expected = prepare(builtin_path(), seed=42).split  # the file given: the whole of it
    lines = (out / "test.jsonl").read_text().splitlines()
    assert [json.loads(line)["messages"] for line in lines] == [c.messages for c in expected.test]


def test_config_prints_the_documented_defaults():
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0 and yaml.safe_load(result.output)["method"] == "lora"


def test_train_says_when_the_fused_cpu_kernels_are_off(tmp_path, tiny_model_dir, small_dataset):
    import os

    trained = ecombot("train", "--model", tiny_model_dir, "--data", small_dataset, "--output", tmp_path / "run",
                      "--max-steps", 2, "--batch-size", 4, "--precision", "bf16",
                      env={**os.environ, "ECOMBOT_CPU_KERNELS": "0", "COLUMNS": "200"})
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "fused CPU kernels off: switched off (ECOMBOT_CPU_KERNELS=0); PyTorch's ops ran instead" in trained.stdout
    info = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert info["results"]["cpu_kernels"] == "off: switched off (ECOMBOT_CPU_KERNELS=0)"


def test_train_then_chat_once(tmp_path, tiny_model_dir, small_dataset):
    run = tmp_path / "run"
    trained = ecombot("train", "--model", tiny_model_dir, "--data", small_dataset, "--output", run, "--max-steps", 2,
                      "--batch-size", 4, "--precision", "fp32", "--no-packing")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "done" in trained.stdout
    info = json.loads((run / "run_config.json").read_text())
    assert info["config"]["packing"] is False and info["results"]["packing"] is None  # padded batches
    again = ecombot("train", "--model", tiny_model_dir, "--data", small_dataset, "--output", run, "--max-steps", 2)
    assert again.returncode == 1 and "already exists" in again.stderr
    chat = ecombot("chat", "--adapter", run, "--once", "Where is my order?", "--max-new-tokens", 5,
                   "--context", "Order Number=HP-1", env={**os.environ, "ECOMBOT_HOME": str(tmp_path / "home")})
    assert chat.returncode == 0, chat.stderr[-2000:]
    # the run trained grounded in the default base (its training pairs went there): chat answers from it
    assert "knowledge: 'default', 3 passages per question" in chat.stderr
    assert chat.stdout.endswith("\n")  # the streamed answer is printed and terminated
    missing = ecombot("chat", "--adapter", tmp_path / "nope", "--once", "hi")
    assert missing.returncode == 1 and "not a trained ecombot run" in missing.stderr


def test_chat_answers_from_the_knowledge_base(knowledge_bases, tiny_model_dir):
    uncovered = runner.invoke(app, ["chat", "--model", str(tiny_model_dir), "--knowledge", "shop", "--k", "2",
                                    "--db", "sqlite:///kb.db", "--once", NOT_COVERED])
    assert uncovered.exit_code == 0, uncovered.output
    assert uncovered.stdout.splitlines()[-2:] == [HANDOFF, "(handed over to a support agent)"]
    covered = runner.invoke(app, ["chat", "--model", str(tiny_model_dir), "--knowledge", "shop", "--once", COVERED,
                                  "--max-new-tokens", "3", "--no-reuse-answers"])
    assert covered.exit_code == 0, covered.output
    assert covered.stdout.splitlines()[-1] == "from: Returns and exchanges (policy.md)"
    assert knowledge_bases == [("shop", "sqlite:///kb.db", 2, None, REUSE_THRESHOLD, None),
                               ("shop", None, 3, None, None, None)]


@pytest.fixture
def served_apps(monkeypatch) -> list:
    """The apps `ecombot serve` builds, in order (run_server replaced: nothing listens)."""
    import ecombot.serve

    apps = []
    monkeypatch.setattr(ecombot.serve, "run_server", lambda app, host, port: apps.append(app) or True)
    return apps


def test_serve_flags_choose_the_knowledge_base(knowledge_bases, tmp_path, monkeypatch, served_apps):
    import ecombot.chat

    apps = served_apps
    monkeypatch.setattr(ecombot.chat, "open_engine", lambda *args, **kwargs: ScriptedEngine())
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    common = ["serve", "--model", "tiny", "--adapter", f"support={grounded_run(tmp_path)}", "--db", db,
              "--session-secret", str(tmp_path / "secret")]
    grounded = runner.invoke(app, [*common, "--k", "2"])
    assert grounded.exit_code == 0, grounded.output
    assert "knowledge: 'shop', 2 passages per question" in grounded.stdout
    assert knowledge_bases == [("shop", db, 2, HANDOFF, REUSE_THRESHOLD, ["data: shop.jsonl"])]
    assert apps[0].state.server.grounder.k == 2
    plain = runner.invoke(app, [*common, "--knowledge", "none"])
    assert plain.exit_code == 0, plain.output
    assert apps[1].state.server.grounder is None and len(knowledge_bases) == 1
    assert "knowledge: none, answers come from the model alone" in plain.stdout
    generating = runner.invoke(app, [*common, "--no-reuse-answers"])
    assert generating.exit_code == 0 and "every answer generated" in generating.stdout
    assert apps[2].state.server.grounder.reuse is None
    from ecombot.cli import REUSE_HELP

    assert f"cosine >= {REUSE_THRESHOLD:.2f} " in REUSE_HELP  # the help states the threshold that applies


def test_serve_gives_answers_room_for_the_longest_answer_its_adapters_trained_on(knowledge_bases, tmp_path,
                                                                                   monkeypatch):
    import ecombot.chat
    import ecombot.serve

    apps = []
    monkeypatch.setattr(ecombot.chat, "open_engine", lambda *args, **kwargs: ScriptedEngine())
    monkeypatch.setattr(ecombot.serve, "run_server", lambda app, host, port: apps.append(app) or True)
    run = grounded_run(tmp_path)
    (run / "data_summary.json").write_text(json.dumps({"answer_tokens": {"p50": 180, "max": 409}}))
    common = ["serve", "--model", "tiny", "--adapter", f"support={run}", "--db", f"sqlite:///{tmp_path / 'shop.db'}",
              "--session-secret", str(tmp_path / "secret")]
    fitted = runner.invoke(app, common)
    assert fitted.exit_code == 0, fitted.output
    # 409 tokens and a quarter more (511.25), in steps of 32; a request may ask for 512, as before
    assert (apps[0].state.server.answer_tokens, apps[0].state.server.config.max_tokens) == (512, 512)
    capped = runner.invoke(app, [*common, "--max-tokens", "300"])  # an operator's cap wins, and is said
    assert capped.exit_code == 0 and apps[1].state.server.answer_tokens == 300
    assert "answers are cut at --max-tokens 300, below the 512 tokens" in capped.stderr
    chosen = runner.invoke(app, [*common, "--max-tokens", "300", "--default-max-tokens", "250"])
    assert chosen.exit_code == 0 and apps[2].state.server.answer_tokens == 250
    assert [a.state.server.answer_tokens_for("support") for a in apps] == [512, 300, 250]


def test_serve_sizes_each_adapters_answers_by_its_own_data_and_its_live_version(knowledge_bases, tmp_path,
                                                                                 monkeypatch, served_apps):
    import ecombot.chat
    from ecombot.serve.dependencies import ServerState

    engine = ScriptedEngine()
    live = {"support": "v1", "copy": "v1"}  # as the engine reports an adapter loaded from its run
    engine.version = lambda adapter=None: live.get(adapter)
    apps = served_apps
    monkeypatch.setattr(ecombot.chat, "open_engine", lambda *args, **kwargs: engine)
    support, copy = grounded_run(tmp_path), tmp_path / "copy"
    copy.mkdir()
    (support / "data_summary.json").write_text(json.dumps({"answer_tokens": {"p50": 40, "max": 90}}))
    (copy / "data_summary.json").write_text(json.dumps({"answer_tokens": {"p50": 180, "max": 409}}))
    result = runner.invoke(app, ["serve", "--model", "tiny", "--adapter", f"support={support}", "--adapter",
                                 f"copy={copy}", "--db", f"sqlite:///{tmp_path / 'shop.db'}", "--session-secret",
                                 str(tmp_path / "secret")])
    assert result.exit_code == 0, result.output
    state: ServerState = apps[0].state.server
    # the copy adapter's long descriptions no longer size the support answers; the base model gets the longest
    assert (state.answer_tokens_for("support"), state.answer_tokens_for("copy"), state.answer_tokens_for("base")) \
        == (200, 512, 512)
    # `ecombot learn` promotes v2, trained on longer answers: the server (reloading v2) gives them room
    v2 = support / "versions" / "v2"
    v2.mkdir(parents=True)
    (v2 / "data_summary.json").write_text(json.dumps({"answer_tokens": {"p50": 100, "max": 300}}))
    (support / "versions.json").write_text(json.dumps({"live": "v2", "versions": [{"name": "v1"}, {"name": "v2"}]}))
    assert state.answer_tokens_for("support") == 200  # still answering with v1 until the engine reloads
    live["support"] = "v2"
    assert state.answer_tokens_for("support") == 384
    live["support"] = "v1"  # `adapter rollback` (v1 looked up again now: the same 200, though v2 is on disk)
    state.answer_limits.clear()
    assert state.answer_tokens_for("support") == 200
    # a promoted version whose summary is damaged: the server answers at its default instead of failing requests
    v3 = support / "versions" / "v3"
    v3.mkdir()
    (v3 / "data_summary.json").write_text("{not json")
    live["support"] = "v3"
    assert state.answer_tokens_for("support") == state.answer_tokens == 512


def test_chat_gives_answers_room_for_the_longest_answer_its_adapter_trained_on(tmp_path, monkeypatch):
    import ecombot.chat

    decodings = []

    def engine(model, adapters, decoding, **kwargs):
        decodings.append(decoding)
        return ScriptedEngine()

    monkeypatch.setattr(ecombot.chat, "open_engine", engine)
    run = grounded_run(tmp_path)
    ask = ["chat", "--adapter", str(run), "--knowledge", "none", "--once", "How do I return a lamp?"]
    assert runner.invoke(app, ask).exit_code == 0 and decodings[-1].max_new_tokens == 200  # nothing recorded
    (run / "data_summary.json").write_text(json.dumps({"answer_tokens": {"p50": 150, "max": 300}}))
    assert runner.invoke(app, ask).exit_code == 0 and decodings[-1].max_new_tokens == 384
    assert runner.invoke(app, [*ask, "--max-new-tokens", "64"]).exit_code == 0 and decodings[-1].max_new_tokens == 64


def test_train_takes_max_length(monkeypatch, tmp_path):
    import ecombot.train

    configs = []
    monkeypatch.setattr(ecombot.train, "train", lambda cfg, **kwargs: configs.append(cfg) or 1 / 0)
    runner.invoke(app, ["train", "--max-length", "2048", "--output", str(tmp_path / "run")])
    assert configs[0].max_length == 2048


def test_bad_flags_are_clear(tmp_path):
    result = ecombot("train", "--method", "prefix-tuning", "--output", tmp_path / "x")
    assert result.returncode == 1 and "'method': must be one of lora, qlora, dora" in result.stderr
    result = ecombot("chat", "--context", "nonsense", "--once", "hi")
    assert result.returncode == 1 and "KEY=VALUE" in result.stderr


@pytest.mark.parametrize("problem, message", [
    (OSError(28, "No space left on device", "runs/x/checkpoints"), "the disk is full (runs/x/checkpoints)"),
    (MemoryError(), "out of memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"), "out of memory"),
])
def test_disk_full_and_out_of_memory_are_clear_messages(monkeypatch, capsys, problem, message):
    import ecombot.train
    from ecombot import cli

    def broken_training(*args, **kwargs):
        raise problem

    monkeypatch.setattr(ecombot.train, "train", broken_training)
    monkeypatch.setattr(sys, "argv", ["ecombot", "train", "--max-steps", "1"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert message in err and "--resume" in err and "Traceback" not in err


def test_unexpected_errors_are_not_hidden(monkeypatch):
    import ecombot.train
    from ecombot import cli

    monkeypatch.setattr(ecombot.train, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a real bug")))
    monkeypatch.setattr(sys, "argv", ["ecombot", "train", "--max-steps", "1"])
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main()


def test_quickstart_flow_on_a_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    """On a CPU without native bf16 (forced here on every machine) the main job runs its short budget and says so."""
    from rich.console import Console

    from ecombot import quickstart
    from ecombot.quickstart import SHORT, SHOWN_QUESTIONS, run

    monkeypatch.setattr(quickstart, "resolve_precision", lambda *a, **k: "fp32")
    monkeypatch.setattr(quickstart, "pick_device", lambda: "cpu")
    console = Console(record=True, width=160)
    summary = run(output=str(tmp_path / "qs"), max_steps=2, console=console, model=str(tiny_model_dir))
    text = console.export_text()
    assert text.count("fine-tuned ") >= SHOWN_QUESTIONS and "held-out test conversations" in text
    assert len(summary["answers"]) == SHOWN_QUESTIONS
    shown = summary["answers"]
    assert [a["slice"] for a in shown] == ["heldout", "heldout", "unseen_topics", "policy_edits", "not_covered"]
    assert len({a["intent"] for a in shown[:2]}) == 2  # different policies shown
    assert set(summary["systems"]) == {"base", "retrieval", "qs", "qs+knowledge"}
    assert set(summary["slices"]) == {"unseen_topics", "policy_edits", "not_covered"}
    assert "from: " in text and "Knowledge base 'harbor-pine'" in text
    assert summary["loss_before"] > 0 and summary["loss_after"] > 0
    saved = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert saved["loss_after"] == summary["loss_after"]
    results = json.loads((tmp_path / "qs" / "eval" / "results.json").read_text())
    assert results["test_size"] == SHORT.eval_items and results["source"]["leaked_test_questions"] == 0
    assert summary["budget"] == "short" and "on 16 held-out test conversations" in " ".join(text.split())
    for name, system in summary["systems"].items():  # the summary reads the evaluation's numbers
        assert system == {m: results["systems"][name][m] and results["systems"][name][m]["value"] for m in system}
    predictions = [json.loads(line) for line in (tmp_path / "qs" / "eval" / "predictions.jsonl").open()]
    assert all(answer in predictions for answer in summary["answers"])
    assert "{{" not in text  # placeholders are filled in what the user sees
    told = " ".join(text.split())  # a CPU without native bf16 is told what the budget leaves out, and the way out
    assert "no native bf16" in told and "trains 2 steps (--max-steps) at lr 0.002" in told
    assert "quickstart --full" in told and "27-43 min" not in told  # the measured figures are for the 60 steps only
    trained = json.loads((tmp_path / "qs" / "run_config.json").read_text())["config"]
    assert (trained["max_steps"], trained["learning_rate"], trained["eval_steps"], trained["eval_max_examples"]) == \
        (2, 0.002, 30, 32)


class StopBeforeTraining(Exception):
    pass


@pytest.mark.parametrize("device, precision, full, steps, expected", [
    ("cpu", "fp32", False, None, (60, 0.002, 30, 32)), ("cpu", "fp32", True, None, (200, "auto", 50, 64)),
    ("cpu", "bf16", False, None, (200, "auto", 50, 64)), ("cuda", "fp32", False, None, (200, "auto", 50, 64)),
    ("cpu", "bf16", False, 7, (7, "auto", 50, 64))])
def test_quickstart_budget_follows_the_compute_path(tmp_path, monkeypatch, device, precision, full, steps, expected):
    """The budget picked for the machine is the one training gets, and only fp32 CPU training is warned about."""
    from rich.console import Console

    from ecombot import quickstart

    monkeypatch.setattr(quickstart, "resolve_precision", lambda *a, **k: precision)
    monkeypatch.setattr(quickstart, "pick_device", lambda: device)
    seen = {}

    def capture(cfg, **kwargs):
        seen["cfg"] = cfg
        raise StopBeforeTraining

    monkeypatch.setattr(quickstart, "train", capture)
    console = Console(record=True, width=300)
    with pytest.raises(StopBeforeTraining):
        quickstart.run(output=str(tmp_path / "qs"), max_steps=steps, console=console, full=full)
    cfg, told = seen["cfg"], " ".join(console.export_text().split())
    assert (cfg.max_steps, cfg.learning_rate, cfg.eval_steps, cfg.eval_max_examples) == expected
    fp32_cpu = (device, precision) == ("cpu", "fp32")
    assert ("no native bf16" in told) == fp32_cpu
    assert ("27-43 min in all" in told) == (fp32_cpu and not full)  # the short budget's measured cost, before it runs
    assert ("--full: 200 steps" in told) == (fp32_cpu and full)


def test_quickstart_full_flag_reaches_the_run(monkeypatch):
    from ecombot import quickstart

    seen = {}
    monkeypatch.setattr(quickstart, "run", lambda **kwargs: seen.update(kwargs))
    result = runner.invoke(app, ["quickstart", "--full", "--max-steps", "7"])
    assert result.exit_code == 0, result.output
    assert seen["full"] is True and seen["max_steps"] == 7


def test_evaluate_and_adapter_inspect_commands(tmp_path, tiny_model_dir, small_dataset, monkeypatch):
    from ecombot import cli
    from ecombot.config import load_config
    from ecombot.train import train

    monkeypatch.setattr(cli.console, "width", 250)

    run = tmp_path / "run"
    train(load_config(None, model=str(tiny_model_dir), data=str(small_dataset), output=str(run), max_steps=1,
                      eval_steps=1, batch_size=4, precision="fp32"), show_progress=False)
    result = runner.invoke(app, ["adapter", "inspect", str(run)])
    assert result.exit_code == 0, result.output
    assert "trainable parameters" in result.output and "model.layers.0.self_attn.q_proj" in result.output
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--data", str(small_dataset), "--adapter", str(run), "--systems",
                                 "retrieval,finetuned", "--max-new-tokens", "4", "--output", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["systems"]) == {"retrieval", "run"} and "report:" in result.output
    assert results["config"]["limit"] == 200  # the CLI's default is the config's (a large split is sampled)
