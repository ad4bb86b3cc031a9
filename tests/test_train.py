import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ecombot.config import load_config
from ecombot.errors import ConfigError, EcombotError, ModelError
from ecombot.train import train
from ecombot.run_dir import COMPLETE_CHECKPOINT, RunDir, checkpoint_step


def tiny_config(tiny_model_dir, data, output, **overrides):
    values = dict(model=str(tiny_model_dir), data=str(data), output=str(output), max_steps=12, eval_steps=4,
                  logging_steps=1, batch_size=4, learning_rate=1e-2, precision="fp32", val_fraction=0.15,
                  test_fraction=0.15, early_stopping_patience=0, warmup_ratio=0.0, knowledge="none")
    values.update(overrides)
    return load_config(None, **values)


def log_of(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_a_packed_run_trains_the_steps_its_recipe_announced(tiny_model_dir, tmp_path):
    """The size rule counts steps in conversations (42 training ones in steps of 4: 11 a pass, 12 passes); a packed
    row holds about 4 only on average (here a few long answers fill rows alone), so the Trainer, left to count
    rows x passes, ran another number of steps than the one `train` printed."""
    data = tmp_path / "uneven.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question number {i} about my order?"},
        {"role": "assistant", "content": f"Answer {i}: " + ("it ships today, " * (40 if i % 10 == 0 else 2))}]}) + "\n"
        for i in range(60)))
    run = tmp_path / "run"
    result = train(tiny_config(tiny_model_dir, data, run, max_steps=-1, epochs="auto", eval_steps=66),
                   show_progress=False)
    recorded = json.loads((run / "run_config.json").read_text())
    assert recorded["recipe"].startswith("42 training conversations: 132 steps of 4 conversations")
    assert recorded["results"]["packing"]["train_rows"] != 11  # rows x 12 passes would not be 132
    assert result.steps == 132 == max(r["step"] for r in log_of(run))


def test_emphasised_conversations_are_trained_as_many_times_a_pass_as_emphasis_says(tiny_model_dir, small_dataset,
                                                                                    tmp_path, capsys):
    """`ecombot learn` weighs its few corrections among many replayed conversations this way: each emphasised one
    is in the pass `emphasis` times (padded batches of 4: 60 conversations are 15 steps a pass, 60 + 6 x 2 are 18)."""
    rows = small_dataset.read_text().splitlines()
    marked = tmp_path / "feedback.jsonl"
    marked.write_text("\n".join(rows[:6] + [json.dumps({"messages": [
        {"role": "user", "content": "A question the data does not have?"},
        {"role": "assistant", "content": "Then it is not repeated."}]})]) + "\n")
    settings = dict(max_steps=-1, epochs=1, packing=False, val_fraction=0.0, test_fraction=0.0)
    plain = train(tiny_config(tiny_model_dir, small_dataset, tmp_path / "plain", **settings), show_progress=False)
    capsys.readouterr()
    emphasised = train(tiny_config(tiny_model_dir, small_dataset, tmp_path / "emphasised", emphasised=str(marked),
                                   emphasis=3, **settings))
    assert (plain.steps, emphasised.steps) == (15, 18)
    assert ("6 training conversations of feedback.jsonl trained 3 times per pass; 1 of its questions are not in the "
            "training split") in capsys.readouterr().out
    with pytest.raises(ConfigError, match="emphasis"):
        tiny_config(tiny_model_dir, small_dataset, tmp_path / "x", emphasis=3)


def test_pinned_steps_never_exceed_the_rules_most_passes_over_the_rows():
    """One long conversation sets the row size and short ones share rows: 4 rows, so the 132 steps announced for
    42 conversations in steps of 4 would be 33 passes; the rule's most is 12."""
    from ecombot.train.recipe import pinned_steps

    said = []
    cfg = load_config(None, grad_accum=1)
    assert pinned_steps(cfg, 132, rows=4, say=said.append).max_steps == 48
    assert said == ["packed into 4 rows: 48 steps (12 passes, the most the rule allows)"]
    assert pinned_steps(cfg, 132, rows=12, say=said.append).max_steps == 132 and len(said) == 1


def test_lora_run_directory_is_complete_and_loads_with_peft(tiny_model_dir, small_dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    result = train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=24), show_progress=False)
    for name in ("adapter_config.json", "adapter_model.safetensors", "run_config.json", "data_summary.json",
                 "train_log.jsonl", "loss_curve.png", "README.md", "data/train.jsonl", "data/test.jsonl"):
        assert (run / name).is_file(), name
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    adapted = {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all linear
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, str(run))
    assert model.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=3, do_sample=False).shape == (1, 6)

    log = log_of(run)
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0] * 0.8  # it learns
    evals = [r for r in log if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12, 16, 20, 24]
    assert result.best_val_loss == pytest.approx(min(r["eval_loss"] for r in evals))
    assert all(r["tokens_per_s"] > 0 for r in log)

    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "Best validation loss" in card
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["kept"] == 60 and sum(summary["split"].values()) == 60 and summary["token_percentiles"]["max"] > 0
    # the answers' lengths (their tokens and the stop token), what chat and serve size their answers by
    from ecombot.data import read_file
    from ecombot.models import load_tokenizer
    tokenizer = load_tokenizer(tiny_model_dir)
    trained = [c for name in ("train", "validation") for c in read_file(run / "data" / f"{name}.jsonl").conversations]
    longest = max(len(tokenizer(m["content"], add_special_tokens=False).input_ids) + 1
                  for c in trained for m in c.messages if m["role"] == "assistant")
    assert summary["answer_tokens"]["max"] == longest == RunDir(run).longest_answer()
    status = json.loads((run / "run_config.json").read_text())
    assert status["status"] == "complete" and status["results"]["steps"] == 24


@pytest.mark.parametrize("method", ["qlora", "dora"])
def test_other_methods_train(tiny_model_dir, small_dataset, tmp_path, method):
    run = tmp_path / method
    result = train(tiny_config(tiny_model_dir, small_dataset, run, method=method, max_steps=4, eval_steps=2),
                   show_progress=False)
    assert result.steps == 4
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is (method == "dora")
    assert len(load_file(run / "adapter_model.safetensors")) > 0


def test_conversations_cut_at_max_length_are_counted_on_the_terminal(tiny_model_dir, small_dataset, tmp_path, capsys):
    """And the rows the file held that training leaves out: said on the terminal with their reason and place."""
    data = tmp_path / "tickets.csv"
    rows = [json.loads(line)["messages"] for line in small_dataset.read_text().splitlines()]
    data.write_text("ticket_id,customer_message,agent_reply\n" + "".join(
        f'T{i},"{m[0]["content"]}","{m[1]["content"] if i != 7 else ""}"\n' for i, m in
        enumerate(rows + rows[:2])))
    run = tmp_path / "short"
    train(tiny_config(tiny_model_dir, data, run, max_steps=1, eval_steps=1, max_length=40),
          show_progress=True)
    out = capsys.readouterr().out
    summary = json.loads((run / "data_summary.json").read_text())
    cut, left_out = summary["truncated"], summary["answer_cut_off_by_max_length"]
    assert cut > left_out > 0  # some keep part of their answer, some none: both said, nothing dropped in silence
    assert (f"{cut} conversation(s) longer than max_length=40 tokens, passages included, are cut there (what follows "
            f"is not trained on); {left_out} kept no answer and are left out; --max-length raises the limit"
            in out)
    assert ("tickets.csv (csv, columns customer_message (customer) and agent_reply (answer)): 59 of 62 conversations "
            "kept; left out, exact duplicate: 2 (tickets.csv:row 62, tickets.csv:row 63); left out, empty answer: 1 "
            "(tickets.csv:row 9)") in out
    assert "(csv, columns customer_message (customer) and agent_reply (answer)), 62 rows read, 59 kept" in (
        run / "README.md").read_text()  # the model card says it too


def test_rslora_and_custom_targets(tiny_model_dir, small_dataset, tmp_path):
    run = tmp_path / "rs"
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2, rslora=True, rank=4,
                      target_modules=["q_proj", "v_proj"]), show_progress=False)
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 4 and {n.rsplit(".", 1)[-1] for n in config["target_modules"]} == {"q_proj", "v_proj"}


def test_adapters_in_the_top_layers_only_leave_the_layers_below_out_of_the_backward_pass(tiny_model_dir,
                                                                                          small_dataset, tmp_path):
    from safetensors import safe_open

    from ecombot.train.recipe import build_model

    run = tmp_path / "top"
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2, adapted_layers=1),
          show_progress=False)
    assert json.loads((run / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    assert "in the top 1 decoder layers only" in (run / "README.md").read_text()
    with safe_open(str(run / "adapter_model.safetensors"), "pt") as adapter:
        assert adapter.keys() and all(".layers.1." in key for key in adapter.keys())

    model = build_model(tiny_config(tiny_model_dir, small_dataset, run, adapted_layers=1), tiny_model_dir, "cpu",
                        "fp32")
    needs_grad = {}
    for index, layer in enumerate(model.base_model.model.model.layers):
        layer.register_forward_hook(lambda _m, _i, out, index=index: needs_grad.__setitem__(
            index, (out[0] if isinstance(out, tuple) else out).requires_grad))
    model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits.sum().backward()
    assert needs_grad == {0: False, 1: True}  # autograd records nothing in layer 0: no backward there
    with pytest.raises(ConfigError, match="has 2 decoder layers"):
        build_model(tiny_config(tiny_model_dir, small_dataset, run, adapted_layers=3), tiny_model_dir, "cpu", "fp32")
    with pytest.raises(ConfigError, match="adapted_layers"):
        tiny_config(tiny_model_dir, small_dataset, run, adapted_layers="top")


def test_answer_only_backward_trains_from_the_same_first_loss_and_needs_packing(tiny_model_dir, small_dataset,
                                                                               tmp_path, monkeypatch):
    """`prompt_gradients: false` trains through models.loss.answer_only_losses on every training step (validation
    keeps the one-pass forward), starts from exactly the default's first loss (same forward values) and then
    follows other gradients; without packing it is refused."""
    from ecombot.errors import ConfigError
    from ecombot.models import loss as loss_module

    calls = []
    original = loss_module.answer_only_losses
    monkeypatch.setattr(loss_module, "answer_only_losses", lambda *a: calls.append(1) or original(*a))
    logs = {}
    for name, prompt_gradients in (("full", True), ("answers", False)):
        run = tmp_path / name
        train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=12, eval_steps=6,
                          prompt_gradients=prompt_gradients), show_progress=False)
        logs[name] = [r["loss"] for r in log_of(run) if "loss" in r]
        assert json.loads((run / "run_config.json").read_text())["config"]["prompt_gradients"] is prompt_gradients
        assert len(calls) == (0 if prompt_gradients else 12)
    assert logs["answers"][0] == pytest.approx(logs["full"][0], rel=1e-5)
    assert max(abs(a - f) / f for a, f in zip(logs["answers"], logs["full"])) > 1e-3  # other gradients
    assert logs["answers"][-1] < logs["answers"][0] * 0.8  # it learns
    with pytest.raises(ConfigError, match="prompt_gradients.*--answer-only-backward.*needs packing"):
        tiny_config(tiny_model_dir, small_dataset, tmp_path / "x", prompt_gradients=False, packing=False)
    for name in ("prompt_gradients", "packing", "rslora", "group_by_length"):  # YAML's quoted "false" is truthy
        with pytest.raises(ConfigError, match=f"'{name}': must be true or false, unquoted"):
            tiny_config(tiny_model_dir, small_dataset, tmp_path / "x", **{name: "false"})


def test_training_is_reproducible(tiny_model_dir, small_dataset, tmp_path):
    losses = []
    for name in ("a", "b"):
        train(tiny_config(tiny_model_dir, small_dataset, tmp_path / name, max_steps=6), show_progress=False)
        losses.append([r["loss"] for r in log_of(tmp_path / name) if "loss" in r])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_early_stopping_keeps_the_best_checkpoint(tiny_model_dir, small_dataset, tmp_path):
    run = tmp_path / "diverge"
    # warmup to an absurd learning rate: validation loss first falls, then climbs (measured: best at step 12 of 16)
    result = train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=40, eval_steps=2, learning_rate=50.0,
                               warmup_ratio=0.3, early_stopping_patience=2, save_total_limit=1), show_progress=False)
    assert result.stopped_early and result.steps < 40
    assert result.best_step < result.steps
    kept = load_file(run / "adapter_model.safetensors")
    best = load_file(run / "checkpoints" / f"checkpoint-{result.best_step}" / "adapter_model.safetensors")
    assert kept.keys() == best.keys() and all(torch.equal(kept[k], best[k]) for k in kept)


def test_existing_run_directory_is_not_overwritten_by_accident(tiny_model_dir, small_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(EcombotError, match="already exists"):
        train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=2), show_progress=False)
    assert (run / "keep.txt").read_text() == "mine"
    with pytest.raises(EcombotError, match="nothing to resume"):
        train(tiny_config(tiny_model_dir, small_dataset, tmp_path / "empty", max_steps=2), resume=True)
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2), overwrite=True,
          show_progress=False)
    assert not (run / "keep.txt").exists() and (run / "adapter_model.safetensors").is_file()


def test_an_overwrite_cut_short_leaves_no_adapter_that_loads_without_its_run(tiny_model_dir, small_dataset, tmp_path,
                                                                            monkeypatch):
    """--overwrite deletes the old run; killed half way, what is left must not load as a plain PEFT adapter
    (no system prompt, no status) just because run_config.json happened to go first."""
    run = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2)
    train(cfg, show_progress=False)

    def config_goes_first_then_die(path, *args, **kwargs):
        (Path(path) / "run_config.json").unlink(missing_ok=True)  # rmtree deletes in the file system's order
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(shutil, "rmtree", config_goes_first_then_die)
        train(cfg, overwrite=True, show_progress=False)
    with pytest.raises(ModelError):
        RunDir(run).check_adapter()


def test_interrupted_checkpoint_is_ignored(tmp_path):
    for step, complete in ((3, True), (6, True), (9, False)):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / COMPLETE_CHECKPOINT).write_text("ok")
    assert RunDir(tmp_path).latest_checkpoint().name == "checkpoint-6"
    assert RunDir(tmp_path / "none").latest_checkpoint() is None


def test_pruning_keeps_the_newest_and_the_best_complete_checkpoints(tmp_path):
    run = RunDir(tmp_path)
    for step in (2, 4, 5, 6, 8):
        (run.checkpoints_dir / f"checkpoint-{step}").mkdir(parents=True)
        if step != 5:  # 5 was interrupted mid-write by an earlier kill
            (run.checkpoints_dir / f"checkpoint-{step}" / COMPLETE_CHECKPOINT).write_text("ok")
    run.prune_checkpoints(keep=2, best=str(run.checkpoints_dir / "checkpoint-4"))
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    run.prune_checkpoints(keep=1, best=None)
    assert [p.name for p in run.checkpoints_dir.iterdir()] == ["checkpoint-8"]


def test_a_run_killed_right_after_pruning_a_checkpoint_resumes_from_a_complete_one(tiny_model_dir, small_dataset,
                                                                                   tmp_path, monkeypatch):
    """With save_total_limit 1, saving a checkpoint prunes the one before: the new one must be marked complete first,
    or a kill in between leaves nothing to resume from. The resumed log holds every step once."""
    run = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, small_dataset, run, max_steps=8, eval_steps=2, save_total_limit=1)
    real_rmtree = shutil.rmtree

    def prune_then_die(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if Path(path).parent == run / "checkpoints":
            raise KeyboardInterrupt  # the process is killed right after an older checkpoint was deleted

    monkeypatch.setattr(shutil, "rmtree", prune_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert RunDir(run).latest_checkpoint() is not None
    result = train(cfg, resume=True, show_progress=False)
    assert result.steps == 8
    log = log_of(run)
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in log if "eval_loss" in r] == [2, 4, 6, 8]


def test_resume_stops_with_a_clear_error_when_there_is_nothing_to_continue(tiny_model_dir, small_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2)
    train(cfg, show_progress=False)
    with pytest.raises(EcombotError, match="already complete"):
        train(cfg, resume=True, show_progress=False)
    info = json.loads((run / "run_config.json").read_text())
    (run / "run_config.json").write_text(json.dumps({**info, "status": "running"}))  # killed after its checkpoint
    data = small_dataset.read_text()
    small_dataset.write_text("".join(data.splitlines(keepends=True)[:-6]))  # the data file was edited since
    with pytest.raises(EcombotError, match="the data changed since this run started"):
        train(cfg, resume=True, show_progress=False)
    small_dataset.write_text(data)
    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint
    log_before = (run / "train_log.jsonl").read_text()
    with pytest.raises(EcombotError, match="no complete checkpoint"):
        train(cfg, resume=True, show_progress=False)
    assert (run / "train_log.jsonl").read_text() == log_before  # nothing restarted from step 0


def test_a_torn_last_log_line_is_skipped_and_resume_cuts_the_log_back_to_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7},
               {"step": 3, "loss": 1.2}]
    run.log_file.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    assert run.train_log() == records  # the last line was cut short by a kill
    run.log_file.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(EcombotError, match="train_log.jsonl:2"):
        run.train_log()  # a damaged line in the middle is not a torn write: say so
    run.log_file.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    run.drop_log_after(2)
    assert run.train_log() == records[:3] and run.log_file.read_text().endswith("}\n")


def test_no_file_of_a_run_is_written_in_place(tiny_model_dir, small_dataset, tmp_path, writes_in_place):
    """A kill at any moment leaves every file of the run whole, the old or the new one. Checkpoints count only once
    marked complete, and the log is appended line by line (a torn last line is skipped when read)."""
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=4, eval_steps=2), show_progress=False)
    written = {p.relative_to(run) for p in writes_in_place if p.is_relative_to(run)}
    assert {p for p in written if p.parts[0] != "checkpoints"} == {Path("train_log.jsonl")}


def test_train_log_lines_end_at_newline_only(tmp_path):
    (tmp_path / "train_log.jsonl").write_bytes('{"step": 1, "note": "a\u2028b\u0085c"}\r\n{"step": 2}\n'.encode())
    assert RunDir(tmp_path).train_log() == [{"step": 1, "note": "a\u2028b\u0085c"}, {"step": 2}]


def test_resume_after_killing_a_real_run_matches_an_uninterrupted_run(tiny_model_dir, small_dataset, tmp_path):
    args = ["--model", str(tiny_model_dir), "--data", str(small_dataset), "--max-steps", "60", "--batch-size", "4",
            "--learning-rate", "0.01", "--precision", "fp32"]
    config = tmp_path / "c.yaml"
    config.write_text("eval_steps: 3\nlogging_steps: 1\nearly_stopping_patience: 0\nval_fraction: 0.15\n"
                      "test_fraction: 0.15\nsave_total_limit: 30\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ecombot", "train", "--config", str(config), *args]

    whole = tmp_path / "whole"
    subprocess.run([*command, "--output", str(whole)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--output", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(r["step"] >= 11 for r in RunDir(killed).train_log()):  # checkpoint 9 is behind, 12 not yet
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be interrupted"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((killed / "run_config.json").read_text())["status"]
    assert status == "running" and not (killed / "adapter_model.safetensors").exists()
    assert RunDir(killed).train_log()[-1]["step"] > checkpoint_step(RunDir(killed).latest_checkpoint())

    resumed = subprocess.run([sys.executable, "-m", "ecombot", "train", "--output", str(killed), "--resume"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Resuming restores weights, optimizer, scheduler, RNG and data position bit for bit, and both processes run the
    # same fp32 kernels on this machine: every logged value and adapter weight came out identical (difference 0.0),
    # so they are compared exactly; a tolerance would let a partly restored state through. Left out: Transformers'
    # end-of-training train_loss, which averages only the steps the resumed process trained.
    def logged(run):
        return [(r["step"], {k: r[k] for k in ("loss", "grad_norm", "learning_rate", "eval_loss") if k in r})
                for r in log_of(run)]

    assert logged(killed) == logged(whole)  # every step once (none lost, none repeated), with the same values
    assert max(step for step, _ in logged(whole)) == 60
    whole_weights = load_file(whole / "adapter_model.safetensors")
    resumed_weights = load_file(killed / "adapter_model.safetensors")
    assert whole_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(whole_weights[k], resumed_weights[k]) for k in whole_weights)
    best_a = json.loads((whole / "run_config.json").read_text())["results"]["best_val_loss"]
    best_b = json.loads((killed / "run_config.json").read_text())["results"]["best_val_loss"]
    assert best_b == best_a


SLOW_SECOND_RANK = r"""
import sys
import time
from pathlib import Path

from transformers import Trainer

from ecombot.cli import main
from ecombot.run_dir import COMPLETE_CHECKPOINT
from ecombot.train.trainer import SupervisedTrainer

real_save_rng_state, real_save_checkpoint = Trainer._save_rng_state, SupervisedTrainer._save_checkpoint


def slow_save_rng_state(self, output_dir):
    if self.args.process_index == 1:
        time.sleep(1)  # the second process writes its part of the checkpoint late
    real_save_rng_state(self, output_dir)


def save_checkpoint(self, model, trial):
    real_save_checkpoint(self, model, trial)
    for folder in Path(self.args.output_dir).glob("checkpoint-*"):
        if (folder / COMPLETE_CHECKPOINT).is_file() and not (folder / "rng_state_1.pth").is_file():
            print("marked complete without the second process's RNG state:", folder.name)


Trainer._save_rng_state, SupervisedTrainer._save_checkpoint = slow_save_rng_state, save_checkpoint
sys.argv = ["ecombot", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("backward", ["--prompt-gradients", "--answer-only-backward"])
def test_training_runs_data_parallel_under_torchrun(tiny_model_dir, small_dataset, tmp_path, backward):
    """Two CPU processes (DDP over gloo, the launcher `accelerate launch` uses): each takes one packed row of every
    global batch, only the first process writes the run directory, the run finishes and its adapter is saved.
    A checkpoint is marked complete only once both processes wrote their part (the second one here is slow).
    Answer-only backward (two forward passes per row, the first without autograd) runs under DDP too."""
    run = tmp_path / "ddp"
    script = tmp_path / "slow_second_rank.py"
    script.write_text(SLOW_SECOND_RANK)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "train", "--model", str(tiny_model_dir), "--data", str(small_dataset), "--output", str(run), "--epochs", "1",
         "--batch-size", "4", "--precision", "fp32", backward], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done") == 1, result.stdout[-2000:]
    assert "marked complete without" not in result.stdout and RunDir(run).latest_checkpoint() is not None
    info = json.loads((run / "run_config.json").read_text())
    assert info["status"] == "complete" and info["config"]["prompt_gradients"] is (backward == "--prompt-gradients")
    rows = info["results"]["packing"]["train_rows"]
    assert rows >= info["results"]["split"]["train"] // 4
    assert info["results"]["steps"] == -(-rows // 2)  # global batch = 2 processes x 1 packed row
    losses = [r["loss"] for r in log_of(run) if "loss" in r]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
    assert (run / "adapter_model.safetensors").is_file()


def test_trainer_counts_flops_like_transformers_and_leaves_older_objects_to_gc_only_after_training(
        tiny_model_dir, small_dataset, tmp_path, monkeypatch):
    import gc

    from transformers import Trainer

    from ecombot.train.trainer import SupervisedTrainer

    seen = []
    original = SupervisedTrainer.training_step

    def spy(self, model, inputs, *args, **kwargs):
        seen.append((gc.get_freeze_count(), self.floating_point_ops(inputs), Trainer.floating_point_ops(self, inputs)))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SupervisedTrainer, "training_step", spy)
    train(tiny_config(tiny_model_dir, small_dataset, tmp_path / "run", max_steps=2), show_progress=False)
    assert len(seen) == 2 and gc.get_freeze_count() == 0
    assert all(frozen > 1000 and ours == theirs > 0 for frozen, ours, theirs in seen)


def test_a_run_without_validation_writes_its_adapter_but_no_final_checkpoint(tiny_model_dir, small_dataset, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=3, val_fraction=0.0), show_progress=False)
    assert result.steps == 3 and result.best_val_loss is None
    assert (run / "adapter_model.safetensors").is_file()
    assert not list((run / "checkpoints").glob("checkpoint-*"))  # nothing to resume or choose from


def test_parent_l2_keeps_a_continued_adapter_near_its_parent_and_needs_one(tiny_model_dir, small_dataset, tmp_path):
    """`parent_l2` (L2-SP toward init_adapter's weights): the same continued training moves the adapter less the
    harder it pulls, yet still moves it; without an adapter to pull toward, or below 0, it is refused."""
    from ecombot.errors import ConfigError

    parent = tmp_path / "parent"
    train(tiny_config(tiny_model_dir, small_dataset, parent, max_steps=6), show_progress=False)
    start = load_file(parent / "adapter_model.safetensors")
    moved = {}
    for pull in (0.0, 0.5, 50.0):
        run = tmp_path / f"pull-{pull}"
        train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=8, init_adapter=str(parent), parent_l2=pull,
                          learning_rate=1e-3), show_progress=False)
        now = load_file(run / "adapter_model.safetensors")
        moved[pull] = sum((now[k].float() - start[k].float()).pow(2).sum().item() for k in start)
        assert json.loads((run / "run_config.json").read_text())["config"]["parent_l2"] == pull
    assert moved[0.0] > moved[0.5] > moved[50.0] > 0
    assert moved[50.0] < 0.5 * moved[0.0]
    for bad in ({"parent_l2": 0.1}, {"parent_l2": -1.0, "init_adapter": str(parent)}):
        with pytest.raises(ConfigError, match="'parent_l2': must be >= 0, and above 0 only with init_adapter"):
            tiny_config(tiny_model_dir, small_dataset, tmp_path / "x", **bad)
