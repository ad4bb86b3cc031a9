"""The benchmark scripts in short form on the tiny model, so they keep working: load test, training, inference."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_serve_load_benchmark_short_form(talkative_model_dir, tmp_path):
    output = tmp_path / "load.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--model", str(talkative_model_dir),
                          "--requests", "40", "--concurrency", "8", "--baseline-requests", "8", "--max-tokens", "16",
                          "--output", str(output)], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "ECOMBOT_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(output.read_text())
    baseline, loaded = result["runs"]
    assert (baseline["ok"], loaded["ok"]) == (8, 40) and baseline["errors"] == {} and loaded["errors"] == {}
    assert result["batching"]["largest_batch"] > 1 and result["batching"]["rows"] == 8 + 40 + 2
    assert loaded["p95_latency_s"] >= loaded["p50_latency_s"] > 0 and "throughput at concurrency 8" in run.stdout


def run_benchmark(script: str, args: list[str], tmp_path) -> dict:
    import os

    output = tmp_path / f"{script}.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args, "--output", str(output)],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "ECOMBOT_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(output.read_text())


def test_train_throughput_benchmark_short_form(tiny_model_dir, tmp_path):
    """All four systems train in their own process on the same data; the summary holds every figure."""
    result = run_benchmark("train_throughput", ["--model", str(tiny_model_dir), "--examples", "8", "--eval-examples", "4",
                                                "--repeats", "1"], tmp_path)
    summary = result["summary"]
    assert list(summary) == ["notebook", "trl", "ecombot", "ecombot-qlora"]
    assert summary["notebook"]["optimizer_steps"] == 2 and summary["ecombot"]["optimizer_steps"] == 1
    for system in summary.values():
        assert system["seconds"]["median"] > 0 and system["peak_rss_mb"]["median"] > 100
        assert 0 < system["heldout_loss"]["median"] < 20
    assert summary["notebook"]["speedup_vs_notebook"]["median"] == 1.0


def test_inference_benchmark_short_form(tiny_model_dir, tmp_path):
    result = run_benchmark("inference", ["--model", str(tiny_model_dir), "--repeats", "1", "--max-new-tokens", "8",
                                         "--quality-examples", "2"], tmp_path)
    assert list(result["runs"]) == ["plain", "ecombot-bf16", "ecombot-int8", "ecombot-int4"]
    assert all(len(runs) == 3 for runs in result["runs"].values()) and result["load_s"]["median"] > 0
    assert all(r["ttft_s"] is not None and 0 < r["tokens"] <= 8 for runs in result["runs"].values() for r in runs)
    losses = [result["summary"][name]["decoding_path_loss"] for name in ["ecombot-bf16", "ecombot-int8", "ecombot-int4"]]
    assert all(0 < loss < 20 for loss in losses) and len(set(losses)) == 3  # the low-bit paths really ran
