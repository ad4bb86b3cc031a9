import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ecombot.config import load_config
from ecombot.errors import EcombotError
from ecombot.train import train
from ecombot.run_dir import COMPLETE_CHECKPOINT, RunDir


def tiny_config(tiny_model_dir, data, output, **overrides):
    values = dict(model=str(tiny_model_dir), data=str(data), output=str(output), max_steps=12, eval_steps=4,
                  logging_steps=1, batch_size=4, learning_rate=1e-2, precision="fp32", val_fraction=0.15,
                  test_fraction=0.15, early_stopping_patience=0, warmup_ratio=0.0)
    values.update(overrides)
    return load_config(None, **values)


def log_of(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


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


def test_rslora_and_custom_targets(tiny_model_dir, small_dataset, tmp_path):
    run = tmp_path / "rs"
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2, rslora=True, rank=4,
                      target_modules=["q_proj", "v_proj"]), show_progress=False)
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 4 and {n.rsplit(".", 1)[-1] for n in config["target_modules"]} == {"q_proj", "v_proj"}


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


def test_interrupted_checkpoint_is_ignored(tmp_path):
    for step, complete in ((3, True), (6, True), (9, False)):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / COMPLETE_CHECKPOINT).write_text("ok")
    assert RunDir(tmp_path).latest_checkpoint().name == "checkpoint-6"
    assert RunDir(tmp_path / "none").latest_checkpoint() is None


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
    while not (killed / "checkpoints" / "checkpoint-9" / COMPLETE_CHECKPOINT).exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be interrupted"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((killed / "run_config.json").read_text())["status"]
    assert status == "running" and not (killed / "adapter_model.safetensors").exists()

    resumed = subprocess.run([sys.executable, "-m", "ecombot", "train", "--output", str(killed), "--resume"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = {r["step"]: r["loss"] for r in log_of(whole) if "loss" in r}
    b = {r["step"]: r["loss"] for r in log_of(killed) if "loss" in r}  # steps after the resume point are logged again
    assert max(a) == max(b) == 60
    for step in range(50, 61):
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    best_a = json.loads((whole / "run_config.json").read_text())["results"]["best_val_loss"]
    best_b = json.loads((killed / "run_config.json").read_text())["results"]["best_val_loss"]
    assert best_b == pytest.approx(best_a, abs=1e-4)


def test_training_runs_data_parallel_under_torchrun(tiny_model_dir, small_dataset, tmp_path):
    """Two CPU processes (DDP over gloo, the launcher `accelerate launch` uses): each takes one packed row of every
    global batch, only the first process writes the run directory, the run finishes and its adapter is saved."""
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ecombot",
         "train", "--model", str(tiny_model_dir), "--data", str(small_dataset), "--output", str(run), "--epochs", "1",
         "--batch-size", "4", "--precision", "fp32"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done") == 1, result.stdout[-2000:]
    info = json.loads((run / "run_config.json").read_text())
    assert info["status"] == "complete"
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
