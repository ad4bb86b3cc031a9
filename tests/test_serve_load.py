"""The load benchmark in short form: a real server process, concurrent clients, zero errors, real batching."""

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
