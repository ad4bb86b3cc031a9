"""The benchmark scripts in short form on the tiny model, so they keep working: load test, training, inference."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert result["machine"]["cpu_class"] and result["machine"]["torch"]  # figures differ ~4x between CPU classes


def run_benchmark(script: str, args: list[str], tmp_path) -> dict:
    import os

    output = tmp_path / f"{script}.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args, "--output", str(output)],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "ECOMBOT_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(output.read_text())


def test_train_throughput_benchmark_short_form(tiny_model_dir, tmp_path):
    """All five systems train in their own process on the same data; the summary holds every figure."""
    result = run_benchmark("train_throughput", ["--model", str(tiny_model_dir), "--examples", "8", "--eval-examples", "4",
                                                "--repeats", "1"], tmp_path)
    summary = result["summary"]
    assert list(summary) == ["notebook", "trl", "ecombot", "ecombot-qlora", "ecombot-grounded"]
    assert summary["ecombot-grounded"]["optimizer_steps"] == 1  # the same conversations, with passages
    assert summary["notebook"]["optimizer_steps"] == 2 and summary["ecombot"]["optimizer_steps"] == 1
    for system in summary.values():
        assert system["seconds"]["median"] > 0 and system["peak_rss_mb"]["median"] > 100
        assert 0 < system["heldout_loss"]["median"] < 20
    assert summary["notebook"]["speedup_vs_notebook"]["median"] == 1.0


def test_train_throughput_measures_the_fused_kernels_against_pytorchs_ops(tiny_model_dir, tmp_path):
    """NAME+eager trains without the C kernels, side by side with the kernels on, in the precision asked for;
    NAME+int8 at precision int8 whatever --precision says."""
    from ecombot.speedups import int8

    systems = "ecombot,ecombot+eager" + (",ecombot+int8" if int8.pays() else "")
    result = run_benchmark("train_throughput", ["--model", str(tiny_model_dir), "--examples", "8", "--eval-examples", "2",
                                                "--repeats", "1", "--systems", systems, "--precision", "fp32"],
                           tmp_path)
    [on], [off] = result["runs"]["ecombot"], result["runs"]["ecombot+eager"]
    assert on["precision"] == off["precision"] == "fp32"
    assert not int8.pays() or [run["precision"] for run in result["runs"]["ecombot+int8"]] == ["int8"]
    assert on["cpu_kernels"] == "on" and off["cpu_kernels"].startswith("off: switched off")
    assert abs(on["heldout_loss"] - off["heldout_loss"]) < 1e-3  # the same computation up to rounding


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_inference_benchmark_short_form(tiny_model_dir, tmp_path, precision):
    """Both precisions on every CPU class (bf16 runs, slower, where the CPU has no native bf16): the low-bit paths run
    for bf16 weights, and for fp32 ones only on CPUs with AVX-512 (where they pay)."""
    from ecombot.speedups.lowbit import fp32_pays

    result = run_benchmark("inference", ["--model", str(tiny_model_dir), "--repeats", "1", "--max-new-tokens", "8",
                                         "--quality-examples", "2", "--precision", precision,
                                         "--no-llama-cpp"], tmp_path)
    assert list(result["runs"]) == ["plain", "ecombot-bf16", "ecombot-int8", "ecombot-int4"]
    assert all(len(runs) == 3 for runs in result["runs"].values()) and result["load_s"]["median"] > 0
    assert all(r["ttft_s"] is not None and 0 < r["tokens"] <= 8 for runs in result["runs"].values() for r in runs)
    engines = ["ecombot-bf16", "ecombot-int8", "ecombot-int4"]
    assert {result["summary"][name]["precision"] for name in engines} == {precision}
    losses = [result["summary"][name]["decoding_path_loss"] for name in engines]
    low_bit_layers = [result["summary"][name]["low_bit_layers"] for name in engines]
    assert all(0 < loss < 20 for loss in losses)
    if precision == "bf16" or fp32_pays():
        assert low_bit_layers[0] == 0 < low_bit_layers[1] == low_bit_layers[2]
        assert len(set(losses)) == 3  # the low-bit paths really ran
    else:
        assert low_bit_layers == [0, 0, 0] and len(set(losses)) == 1


def test_batched_decode_benchmark_short_form(tiny_model_dir, tmp_path):
    """Each batch size answered with the head in both layouts, the same questions for both, per repeat."""
    result = run_benchmark("batched_decode", ["--model", str(tiny_model_dir), "--batch-sizes", "1,3", "--repeats", "2",
                                              "--max-new-tokens", "4", "--precision", "fp32"], tmp_path)
    assert result["precision"] == "fp32" and list(result["summary"]) == ["1", "3"]
    for runs in result["runs"].values():
        plain, major = runs["x @ Wt"], runs["W @ xt"]
        assert len(plain) == len(major) == 2 and all(0 < r["tokens"] and r["seconds"] > 0 for r in plain + major)
        assert [len(r["texts"]) for r in plain] == [len(r["texts"]) for r in major]
    assert [len(r["texts"]) for r in result["runs"]["3"]["W @ xt"]] == [3, 3]
    assert [s["weight_major"] for s in result["summary"].values()] == [False, True]  # on every CPU class


def import_benchmark(name: str):
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_train_throughput_reports_a_failed_system_and_keeps_measuring_the_others(tmp_path, monkeypatch, capsys):
    import pytest

    bench = import_benchmark("train_throughput")
    calls = []

    def fake_worker(script, args):
        system, layers = args[args.index("--worker") + 1], args[args.index("--adapted-layers") + 1]
        calls.append(system if layers == "all" else f"{system}@{layers}")
        if system == "trl":
            raise bench.WorkerFailed("worker trl failed:\nImportError: no trl here")
        seconds = {"notebook": 30.0, "ecombot": 10.0 if layers == "all" else 7.5}[system]
        return {"seconds": seconds, "steps": 4, "peak_rss_mb": 2000.0, "peak_gpu_mb": 900.0, "heldout_loss": 3.0,
                "answer_tokens": 600, "tokens_per_s": 600 / seconds}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    output = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--systems", "notebook,trl,ecombot,ecombot@9",
                                      "--repeats", "2", "--output", str(output)])
    with pytest.raises(SystemExit, match="failed: trl"):
        bench.main()
    assert calls == ["notebook", "trl", "ecombot", "ecombot@9", "notebook", "ecombot", "ecombot@9"]  # trl not retried
    result = json.loads(output.read_text())
    assert list(result["summary"]) == ["notebook", "ecombot", "ecombot@9"] and "no trl here" in result["failures"]["trl"]
    assert result["summary"]["ecombot"]["speedup_vs_notebook"]["all"] == [3.0, 3.0]
    assert result["summary"]["ecombot@9"]["speedup_vs_notebook"]["all"] == [4.0, 4.0]
    assert result["summary"]["ecombot"]["peak_gpu_mb"]["median"] == 900.0
    table = capsys.readouterr().out
    assert "peak GPU MB" in table and "FAILED" in table
    for wrong in ("notebook@9", "ecombot@top", "ecombt", "notebook+eager", "ecombot+fast"):  # layer variants are for ecombot's systems only
        monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--systems", wrong])
        with pytest.raises(SystemExit):
            bench.main()


def test_random_weights_make_a_cached_default_model_that_needs_no_gguf(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from ecombot.models import load_tokenizer, registry, resolve_model

    bench = import_benchmark("random_weights")
    home = tmp_path / "home"
    out = bench.write_random_model(tiny_model_dir, home / "models" / registry.DEFAULT_MODEL, seed=1)
    monkeypatch.setenv("ECOMBOT_HOME", str(home))
    monkeypatch.setattr(registry, "_default_gguf", lambda: (_ for _ in ()).throw(AssertionError("GGUF read")))
    assert resolve_model(registry.DEFAULT_MODEL) == out
    original, fresh = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in original.items()}
    embed = next(k for k in fresh if "embed_tokens" in k)
    assert not torch.equal(fresh[embed], original[embed])
    question = "Where is my order?"
    assert load_tokenizer(out)(question)["input_ids"] == load_tokenizer(tiny_model_dir)(question)["input_ids"]


@pytest.mark.parametrize("packing", ["--packing", "--no-packing"])
def test_step_profile_short_form(tiny_model_dir, tmp_path, packing):
    result = run_benchmark("step_profile", ["--model", str(tiny_model_dir), "--steps", "3", "--batch-sizes", "2,4",
                                            "--trainer-examples", "16", packing], tmp_path)
    assert result["device"] == "cpu" and list(result["steps"]) == ["2", "4"] and result["machine"]["cpu_class"]
    assert result["packing"] is (packing == "--packing")
    small, large = result["steps"]["2"], result["steps"]["4"]
    assert large["tokens_per_step"] > small["tokens_per_step"] > 0 and small["median_ms"] > 0
    # 16 conversations in batches of 8: two padded batches, or two or three packed rows (best fit, no splitting)
    assert result["ecombot_train"]["steps"] in ((2, 3) if packing == "--packing" else (2,))
    assert result["ecombot_train"]["train_seconds"] > 0


def test_learn_rounds_benchmark_short_form(tiny_model_dir, tmp_path):
    """Two feedback rounds on the tiny model: each round's feedback goes through the store and `ecombot learn`, the
    three systems are scored before and after, and the retrain runs after the last round."""
    result = run_benchmark("learn_rounds", ["--model", str(tiny_model_dir), "--rounds", "2", "--base-steps", "4",
                                            "--per-topic", "6", "--per-edit", "2", "--slice-extra", "4", "--guard", "6",
                                            "--max-new-tokens", "4"], tmp_path)
    first, second = result["rounds"]
    assert (first["feedback"], first["trained"] + first["held_out"]) == (8, 8) and first["held_out"] == 2
    assert first["learn"]["version"] == "v2" and second["learn"]["version"] == "v3"
    assert set(first["systems"]) == {"learn", "naive"} and set(second["systems"]) == {"learn", "naive", "retrain"}
    for row in result["rounds"]:
        for scores in row["systems"].values():
            assert scores["guard"]["items"] == 6 and scores["slice_after"]["items"] == row["slice_items"] > 0
            assert 0 <= scores["slice_after"]["intent"] <= 1 and scores["guard"]["loss"] > 0
    assert second["retrain_seconds"] > 0 and first["retrain_seconds"] is None
    assert result["base"]["steps"] == second["retrain_steps"] == 4  # the retrain runs the base run's recipe
    assert all(0 < row["learn"]["score_seconds"] < row["learn"]["seconds"] for row in result["rounds"])
    assert (tmp_path / "learn_rounds.png").read_bytes()[:4] == b"\x89PNG"

    # Another recipe from the same base (--base: copied without the versions the first run made): the same rounds,
    # the base not trained again, its guard scores the same.
    again = run_benchmark("learn_rounds", ["--model", str(tiny_model_dir), "--rounds", "1", "--base",
                                           result["base"]["path"], "--systems", "learn", "--recipe", "1,2,0.5,0.1,3",
                                           "--per-topic", "6", "--per-edit", "2", "--slice-extra", "4", "--guard", "6",
                                           "--max-new-tokens", "4"], tmp_path)
    assert again["base"]["seconds"] is None and again["base"]["steps"] == 4
    assert again["base"]["guard"] == result["base"]["guard"] and again["recipe"]["feedback_repeats"] == 3
    only = again["rounds"][0]
    assert only["learn"]["version"] == "v2" and set(only["systems"]) == {"learn"}
    assert only["systems"]["learn"]["slice_before"] == first["systems"]["learn"]["slice_before"]


def test_learn_settings_benchmark_short_form(tiny_model_dir, tmp_path):
    """Round 1 of learn_rounds under two recipes from one base: each trains with its own replay, steps and learning
    rate, and is scored before and after on the same slice and guard."""
    from ecombot.learn.loop import Recipe, learn_steps

    result = run_benchmark("learn_settings", ["--model", str(tiny_model_dir), "--base-steps", "4", "--recipes",
                                              "1,2,0.5,0,3", "2,1,0.25", "--per-topic", "6", "--per-edit", "2",
                                              "--slice-extra", "4", "--guard", "6", "--max-new-tokens", "4"], tmp_path)
    first, second = result["recipes"]
    assert first["recipe"] == {"replay_per_item": 2, "lr_factor": 0.5, "passes": 1, "parent_l2": 0.0,
                               "feedback_repeats": 3}
    # a recipe without its fourth and fifth fields: the default pull, each feedback item once a pass
    assert (second["recipe"]["parent_l2"], second["recipe"]["feedback_repeats"]) == (Recipe.parent_l2, 1)
    base_lr = 2 * first["learning_rate"]  # the base run's: each recipe takes its share of it
    assert second["learning_rate"] == pytest.approx(base_lr * 0.25)
    for got, per_item, passes, repeats in ((first, 2, 1, 3), (second, 1, 2, 1)):
        trained = 8 - 2  # 8 feedback items, a fifth (2) held out as the slice
        assert got["replayed"] == max(32, per_item * trained)  # MIN_REPLAY: the tiny base has more to replay
        assert got["steps"] == learn_steps(trained * repeats + got["replayed"], 8, passes)
        assert got["guard"]["items"] == 6 and got["slice_after"]["items"] == got["slice_before"]["items"] > 0
        assert 0 < got["train_seconds"] < got["seconds"]
    assert first["slice_before"] == second["slice_before"]  # the same base, the same held-out items


def test_step_ops_short_form(tiny_model_dir, tmp_path):
    """The quickstart's grounded step profiled by operator: the shares add up to at most the whole step, the matrix
    products are among the operators, and the machine's matrix product rate is recorded beside them."""
    result = run_benchmark("step_ops", ["--model", str(tiny_model_dir), "--steps", "3", "--top", "40"], tmp_path)
    assert result["matmul_2048_gflops"] > 0 and result["step_s"] > 0 and result["machine"]["cpu_class"]
    assert result["precision"] in ("bf16", "fp32", "int8")
    ops = {row["op"]: row for row in result["ops"]}
    assert "aten::mm" in ops and ops["aten::mm"]["calls_per_step"] > 0
    assert ("aten::_int_mm" in ops) == (result["precision"] == "int8")  # int8: the input gradients
    assert 0.5 < sum(row["share"] for row in result["ops"]) <= 1 + 1e-4 * len(ops)  # shares rounded to 4 places
    assert result["tokens_per_s"] > 0
    assert result["profiled_self_s_per_step"] <= result["step_s"] * 1.5


def test_recommend_grammar_benchmark_short_form(tiny_model_dir, tmp_path, write_catalog):
    from ecombot.catalog import read_catalog
    from ecombot.cli import app
    from typer.testing import CliRunner

    catalog = write_catalog(tmp_path / "catalog.jsonl", read_catalog("builtin")[::16])
    run = tmp_path / "rec"
    trained = CliRunner().invoke(app, ["train", "--task", "recommend", "--catalog", str(catalog), "--model",
                                       str(tiny_model_dir), "--output", str(run), "--max-steps", "1",
                                       "--batch-size", "4", "--precision", "fp32"])
    assert trained.exit_code == 0, trained.output
    results = run_benchmark("recommend_grammar", ["--adapter", str(run), "--limit", "3", "--max-new-tokens", "10"],
                            tmp_path)
    assert set(results["grammars"]) == {"candidates", "catalog", "none"}
    first = results["grammars"]["candidates"]["systems"]
    assert set(first) == {"search", "base-fewshot", "rec"} and 0 <= first["rec"]["same_as_search"] <= 3
    assert set(results["grammars"]["none"]["systems"]) == {"base-fewshot", "rec"}
    assert all(r["grammar"] == g and r["requests"] == 3 for g, r in results["grammars"].items())


def test_support_log_csv_is_read_whole_with_its_multi_line_answers(tmp_path):
    from ecombot.data import load_conversations

    output = tmp_path / "support.csv"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "support_log_csv.py"), "--rows-per-intent", "5",
                          "--output", str(output)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    conversations, report = load_conversations(output)
    assert report.rows_read == len(conversations) == 60 and not report.dropped
    assert len({c.intent for c in conversations}) == 12
    assert all(c.answers[0].count("\n") >= 4 and "1. " in c.answers[0] for c in conversations)


def test_multitask_benchmark_short_form(tiny_model_dir, small_dataset, tmp_path, write_catalog):
    """Three one-task runs and one multi-task run of three times their steps, then each task's evaluation of its own
    adapter and of the multi-task one on the same test set."""
    from ecombot.catalog import read_catalog

    catalog = write_catalog(tmp_path / "catalog.jsonl", read_catalog("builtin")[::16])
    result = run_benchmark("multitask", ["--model", str(tiny_model_dir), "--catalog", str(catalog), "--data",
                                         str(small_dataset), "--steps", "1", "--support-limit", "3",
                                         "--recommend-limit", "2", "--max-new-tokens", "4", "--work",
                                         str(tmp_path / "work")], tmp_path)
    assert [result["runs"][name]["steps"] for name in ("support", "copy", "recommend", "multi")] == [1, 1, 1, 3]
    assert set(result["runs"]["multi"]["other_tasks"]) == {"copy", "recommend"}
    for task, scored in (("support", 3), ("copy", result["runs"]["copy"]["split"]["test"]), ("recommend", 2)):
        own, multi = result["scores"][task]["own"], result["scores"][task]["multi"]
        assert own["scored"] == multi["scored"] == scored
    assert 0 <= result["scores"]["copy"]["multi"]["attribute_coverage"]["value"] <= 1
    assert len(result["table"]) == 13 and all(len(row) == 3 for row in result["table"])


def test_retrieval_latency_short_form_times_search_and_the_fact_check(tmp_path):
    """The latency part alone (the calibration reads the whole built-in dataset): the search and, for the same
    passages, reading their facts once and checking an answer."""
    result = run_benchmark("retrieval", ["--no-calibration", "--sizes", "300", "--questions", "3"], tmp_path)
    [row] = result["latency"]
    assert (row["passages"], row["vectors"], row["questions"]) == (300, "real", 3)
    assert row["p95_ms"] >= row["median_ms"] > 0 and row["facts_read_s"] > 0 and row["check_median_ms"] > 0
    assert "calibration" not in result and result["machine"]["cpu_class"]
