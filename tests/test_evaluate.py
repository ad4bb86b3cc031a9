import json
import shutil

import numpy as np
import pytest
import torch

from ecombot.errors import EcombotError
from ecombot.evaluate import EvalConfig, EvalResult, evaluate, print_table, run_evaluation
from ecombot.evaluate import metrics
from ecombot.evaluate.anatomy import effective_rank, inspect_adapter, low_rank_singular_values
from ecombot.evaluate.report import TABLE_METRICS, fmt, digits_for, markdown_to_html


# --- metrics against hand-computed values -----------------------------------------------------------------

def test_rouge_l_hand_computed():
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert metrics.rouge_l(["the cat sat"], ["the cat sat on the mat"]) == [pytest.approx(200 / 3)]
    assert metrics.rouge_l(["completely different words"], ["the cat sat"]) == [0.0]


def test_corpus_bleu_and_chrf_bounds():
    refs = ["you can return items within 30 days", "refunds take 5 business days"]
    idx = metrics.bootstrap_indices(len(refs), samples=50)
    same = metrics.corpus_bleu(refs, refs, idx)
    assert same.value == pytest.approx(100.0) and same.low == pytest.approx(100.0)
    assert metrics.corpus_chrf(refs, refs, idx).value == pytest.approx(100.0)
    assert metrics.corpus_bleu(["zzz qqq", "xxx yyy"], refs, idx).value == pytest.approx(0.0)


def test_corpus_bleu_matches_sacrebleu_and_its_interval_contains_it():
    import sacrebleu

    hyps = ["returns are free within 30 days", "we ship in 3 to 5 days", "call us any time", "the code is invalid"]
    refs = ["returns are accepted within 30 days", "standard shipping takes 3 to 5 days", "call us on weekdays",
            "that promo code has expired"]
    est = metrics.corpus_bleu(hyps, refs, metrics.bootstrap_indices(4, samples=300))
    assert est.value == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert est.low <= est.value <= est.high


@pytest.mark.parametrize("name", ["bleu", "chrf"])
def test_corpus_interval_is_sacrebleu_on_each_resampled_corpus(name):
    import sacrebleu

    hyps = ["returns are free within 30 days", "we ship in 3 to 5 days", "call us any time", "the code is invalid", ""]
    refs = ["returns are accepted within 30 days", "standard shipping takes 3 to 5 days", "call us on weekdays",
            "that promo code has expired", "sorry about that"]
    sacrebleu_score = getattr(sacrebleu, f"corpus_{name}")
    indices = metrics.bootstrap_indices(len(refs), samples=200, seed=5)
    est = getattr(metrics, f"corpus_{name}")(hyps, refs, indices)
    resampled = [sacrebleu_score([hyps[i] for i in row], [[refs[i] for i in row]]).score for row in indices]
    assert est.value == pytest.approx(sacrebleu_score(hyps, [refs]).score, abs=1e-9)
    assert [est.low, est.high] == pytest.approx(np.percentile(resampled, [2.5, 97.5]).tolist(), abs=1e-9)


def test_mean_bootstrap():
    idx = metrics.bootstrap_indices(100, seed=1)
    est = metrics.mean_estimate([0.0, 1.0] * 50, idx)
    assert est.value == 0.5 and 0.38 < est.low < 0.5 < est.high < 0.62
    constant = metrics.mean_estimate([0.7] * 100, idx)
    assert constant.low == pytest.approx(0.7) and constant.high == pytest.approx(0.7)
    assert np.array_equal(metrics.bootstrap_indices(10, seed=3), metrics.bootstrap_indices(10, seed=3))


def test_cosine_and_nearest_intents():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [1.0, 1.0]])
    assert metrics.cosine_rows(a, b) == pytest.approx([1.0, np.sqrt(0.5)])
    pool = np.array([[1.0, 0.1], [0.1, 1.0]])
    assert metrics.nearest_intents(a, pool, ["refund", "shipping"]) == ["refund", "shipping"]


def test_effective_rank_and_low_rank_svd():
    assert effective_rank(np.array([3.0, 1.0, 0.0])) == 1  # 9 / 10 of the energy in the first value
    assert effective_rank(np.array([1.0, 1.0, 1.0, 1.0])) == 4
    assert effective_rank(np.zeros(3)) == 0
    torch.manual_seed(0)
    b, a = torch.randn(50, 4), torch.randn(4, 30)
    expected = torch.linalg.svdvals(2.0 * b.double() @ a.double()).numpy()[:4]
    assert low_rank_singular_values(b, a, 2.0) == pytest.approx(expected, rel=1e-6)


def test_report_number_format():
    assert fmt(metrics.Estimate(12.345, 10.0, 14.5), 1) == "12.3 [10.0, 14.5]"
    assert fmt(None) == "–"


def test_html_report_renders_the_markdown_and_escapes_answers():
    page = markdown_to_html("# Title\n\n| system | bleu |\n|---|---|\n| base | <b>1.0</b> |\n\n"
                            "![metrics](metrics.png)\n\n- *base*: <script>alert(1)</script>\n")
    assert page.startswith("<!doctype html>") and "<h1>Title</h1>" in page
    assert "<th>system</th>" in page and "<td>&lt;b&gt;1.0&lt;/b&gt;</td>" in page
    assert '<img src="metrics.png" alt="metrics"' in page
    assert "<li><em>base</em>: &lt;script&gt;" in page and "<script>" not in page


# --- the whole evaluation on a tiny model ------------------------------------------------------------------

@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """The default knowledge base lives in $ECOMBOT_HOME: here an empty one, so grounded systems are skipped."""
    monkeypatch.setenv("ECOMBOT_HOME", str(tmp_path / "home"))


def test_evaluation_outputs(tmp_path, tiny_run, writes_in_place):
    data, run = tiny_run
    out = tmp_path / "eval"
    cfg = EvalConfig(data=str(data), adapters=[str(run)], output=str(out), max_new_tokens=6, val_fraction=0.15,
                     test_fraction=0.15)
    result = run_evaluation(cfg)
    assert [p for p in writes_in_place if p.is_relative_to(out)] == []  # each file renamed into place, whole
    results = json.loads((out / "results.json").read_text())
    assert set(results["systems"]) == {"base", "base-fewshot", "retrieval", "run", "run+retrieval"}
    # the base model is told the store prompt; the adapter what it was trained with (none by default)
    from ecombot.config import GENERIC_SYSTEM_PROMPT
    assert results["system_prompts"] == {"base": GENERIC_SYSTEM_PROMPT, "base-fewshot": GENERIC_SYSTEM_PROMPT,
                                         "run": None, "run+retrieval": None}
    for name, system in results["systems"].items():
        for metric in ("bleu", "chrf", "rouge_l", "semantic", "intent_accuracy", "latency_s"):
            low, high = system[metric]["ci95"]
            assert low <= system[metric]["value"] <= high, (name, metric)
        assert 0 <= system["bleu"]["value"] <= 100 and 0 <= system["chrf"]["value"] <= 100
        assert (system["loss"] is None) == (name == "retrieval")
        # the random tiny model never stops by itself: every generated answer is cut at the limit; retrieval's never
        assert system["cut_at_limit"] == (None if name == "retrieval" else {"value": 1.0, "ci95": [1.0, 1.0]}), name
    assert results["config"]["max_new_tokens"] == 6
    # retrieval on a templated dataset finds the right policy: answers of the same intent
    assert results["systems"]["retrieval"]["intent_accuracy"]["value"] >= 0.8
    assert results["source"]["leaked_test_questions"] == 0 and len(results["source"]["data_sha256"]) == 16
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == results["test_size"] == len((run / "data" / "test.jsonl").read_text().splitlines())
    assert set(predictions[0]["answers"]) == set(results["systems"])
    # every number in the report's table is the one in results.json
    report = (out / "report.md").read_text()
    for name, system in result.systems.items():
        row = "| " + " | ".join([name] + [fmt(getattr(system, m), digits_for(m)) for m in TABLE_METRICS]) + " |"
        assert row in report
    assert "## Adapter anatomy: run" in report and report.count("**Question**") == min(10, results["test_size"])
    for key, path in result.files.items():
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    assert "<table>" in (out / "report.html").read_text()
    per_intent = results["systems"]["retrieval"]["per_intent"]
    assert sum(v["n"] for v in per_intent.values()) == results["test_size"]
    assert set(next(iter(per_intent.values()))) == {"n", "semantic", "rouge_l", "intent_correct"}


def test_answers_get_room_for_the_longest_answer_in_the_data(tmp_path, tiny_run, tiny_model_dir):
    """A store writing long step-by-step answers is not cut at the default 160 tokens: without --max-new-tokens the
    limit follows the longest answer scored or trained on, and the report says what share stopped at it."""
    from rich.console import Console

    from ecombot.models import answer_token_counts, answer_token_limit, load_tokenizer

    data, run = tiny_run
    steps = " ".join(f"{n}. Open your account page, choose the order, then press the return button." for n in range(1, 16))
    test = tmp_path / "long.jsonl"
    test.write_text("".join(json.dumps({"messages": [{"role": "user", "content": question},
                                                     {"role": "assistant", "content": steps}]}) + "\n"
                            for question in ("How do I return a lamp?", "How do I return a rug?")))
    longest = answer_token_counts(load_tokenizer(tiny_model_dir), [steps])[0]
    expected = answer_token_limit(longest, 160)
    assert longest > 160 and expected > 160  # the test's point: the old fixed limit would cut the reference
    console = Console(record=True, width=200)
    result = run_evaluation(EvalConfig(test=str(test), adapters=[str(run)], systems=("finetuned",),
                                       output=str(tmp_path / "eval")), console)
    assert result.config.max_new_tokens == expected
    assert f"answers may run to {expected} tokens: the longest answer in the data is {longest}" in console.export_text()
    run_scores = result.systems["run"]
    assert run_scores.answer_tokens.value == expected and run_scores.cut_at_limit.value == 1.0  # never stops: cut
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"stopped at the {expected}-token limit" in report
    # --max-new-tokens still decides when given
    result = run_evaluation(EvalConfig(test=str(test), adapters=[str(run)], systems=("finetuned",), max_new_tokens=5,
                                       output=str(tmp_path / "eval5")))
    assert result.config.max_new_tokens == 5 and result.systems["run"].answer_tokens.value == 5


def test_returned_result_is_what_the_files_hold(tmp_path, tiny_run):
    from rich.console import Console

    data, run = tiny_run
    out = tmp_path / "eval"
    result = run_evaluation(EvalConfig(data=str(data), adapters=[str(run)], systems=("retrieval", "finetuned"),
                                       output=str(out), max_new_tokens=4, val_fraction=0.15, test_fraction=0.15))
    assert isinstance(result, EvalResult) and result.files["results"] == out / "results.json"
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(result.to_dict()))
    assert results["adapter_anatomy"][0]["rank"] == result.adapter_anatomy[0]["rank"] == 16
    for name, system in result.systems.items():
        bleu = system.bleu
        assert results["systems"][name]["bleu"] == {"value": bleu.value, "ci95": [bleu.low, bleu.high]}
        assert results["systems"][name]["loss"] == (system.loss.to_dict() if system.loss else None)
        assert results["systems"][name]["per_intent"] == {i: s.to_dict() for i, s in system.per_intent.items()}
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["answers"] for line in lines] == [p.answers for p in result.predictions]
    (out / "results.json").unlink()  # the terminal table is drawn from the object, not from the file
    console = Console(record=True, width=200)
    print_table(result, console)
    wide = console.export_text()
    assert f"{result.systems['run'].bleu.value:.1f}" in wide and " cut " in wide  # answers stopped at the limit
    narrow = Console(record=True, width=80)  # a default terminal: the deciding columns, every value whole
    print_table(result, narrow)
    text = narrow.export_text()
    assert "BLEU" not in text and "ROUGE-L" in text and "handoff R" not in text  # no handoffs on this set
    assert f"{result.systems['run'].rouge_l.value:.1f}" in text and "…" not in text


def test_same_seed_gives_the_training_test_set(tiny_run):
    data, run = tiny_run
    evaluation = evaluate(EvalConfig(data=str(data), systems=("retrieval",), val_fraction=0.15, test_fraction=0.15))
    trained_test = [json.loads(line)["messages"][0]["content"] for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    assert [p.question for p in evaluation.predictions] == trained_test


def test_without_data_an_adapter_is_scored_on_its_own_runs_test_split(tmp_path, tiny_run):
    """`ecombot evaluate --adapter runs/faq` after `train --data faq.json`: the FAQ's held-out questions (the split
    train kept), not the built-in store's; the retrieval pool is the run's own training split."""
    from rich.console import Console

    data, run = tiny_run
    console = Console(record=True, width=200)
    result = run_evaluation(EvalConfig(adapters=[str(run)], systems=("retrieval",), output=str(tmp_path / "e")),
                            console)
    kept = [json.loads(line)["messages"][0]["content"] for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    assert [p.question for p in result.predictions] == kept
    assert result.source["test"] == str(run / "data" / "test.jsonl")
    assert result.source["data"] == str(run / "data" / "train.jsonl")
    assert "held-out split of run's own data" in console.export_text()
    # a learn version is scored on its run's split (its own data is feedback, split 100/0/0)
    root = tmp_path / "root"
    shutil.copytree(run, root)
    (root / "versions.json").write_text(json.dumps({"live": "v1", "versions": []}))
    shutil.copytree(run, root / "versions" / "v2")
    (root / "versions" / "v2" / "data" / "test.jsonl").write_text("")
    again = evaluate(EvalConfig(adapters=[str(root), str(root / "versions" / "v2")], systems=("retrieval",)))
    assert [p.question for p in again.predictions] == kept
    # a run that kept no held-out questions, adapters holding different splits, a catalog run: said, not guessed
    shutil.move(root / "versions" / "v2", tmp_path / "empty")
    with pytest.raises(EcombotError, match="kept no held-out questions.*--data FILE or --test FILE"):
        evaluate(EvalConfig(adapters=[str(tmp_path / "empty")], systems=("retrieval",)))
    other = tmp_path / "other"
    shutil.copytree(run, other)
    lines = (other / "data" / "test.jsonl").read_text().splitlines(keepends=True)
    (other / "data" / "test.jsonl").write_text("".join(lines[1:]))
    with pytest.raises(EcombotError, match="different test sets.*--data FILE or --test FILE"):
        evaluate(EvalConfig(adapters=[str(run), str(other)], systems=("retrieval",)))
    info = json.loads((other / "run_config.json").read_text())
    info["config"]["task"] = "copy"
    (other / "run_config.json").write_text(json.dumps(info))
    with pytest.raises(EcombotError, match="is a copy run: score it with `ecombot evaluate --task copy"):
        evaluate(EvalConfig(adapters=[str(other)], systems=("retrieval",)))


def test_a_large_test_split_is_sampled_by_default_and_said(tiny_run):
    """A 4,500-row file keeps ~450 held-out questions: answering all with six systems took ~1.5 h on a 2-core CPU.
    By default the first DEFAULT_LIMIT of the seeded, intent-stratified split are scored, the same for every system,
    and the terminal, results and table say how many of how many; 0 scores them all."""
    from rich.console import Console

    from ecombot.config.evaluate import DEFAULT_LIMIT

    data, run = tiny_run
    split = [json.loads(line)["messages"][0]["content"] for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    assert len(split) > 2 and EvalConfig().limit == DEFAULT_LIMIT == 200
    console = Console(record=True, width=200)
    sampled = evaluate(EvalConfig(adapters=[str(run)], systems=("retrieval",), limit=2), console)
    assert [p.question for p in sampled.predictions] == split[:2]
    assert sampled.test_size == 2 and sampled.source["heldout_questions"] == len(split)
    assert f"scoring 2 of the {len(split)} held-out questions" in console.export_text()
    print_table(sampled, console)
    assert f"2 of {len(split)} held-out test conversations" in console.export_text()
    every = evaluate(EvalConfig(adapters=[str(run)], systems=("retrieval",), limit=0))
    assert [p.question for p in every.predictions] == split and "heldout_questions" not in every.source


def test_a_test_file_sorted_by_intent_is_sampled_across_its_intents(tmp_path, tiny_run):
    """Public support sets come sorted by intent (Bitext's does): a --limit that took the file's first N scored one
    intent. The pick is the split's stratified order, seeded, so every system and every rerun get the same items."""
    from rich.console import Console

    data, run = tiny_run
    intents = ["refund", "shipping", "warranty", "discount"]
    test = tmp_path / "sorted.jsonl"
    test.write_text("".join(json.dumps({"intent": intent, "messages": [
        {"role": "user", "content": f"question {k} about my {intent}?"},
        {"role": "assistant", "content": f"Answer {k} on {intent}."}]}) + "\n" for intent in intents for k in range(6)))
    console = Console(record=True, width=200)
    picked = evaluate(EvalConfig(test=str(test), adapters=[str(run)], systems=("retrieval",), limit=4), console)
    assert sorted(p.intent for p in picked.predictions) == sorted(intents)
    assert picked.source["heldout_order"] == "stratified by intent, seed 42"
    assert picked.source["heldout_questions"] == 24
    assert "scoring 4 of the 24 held-out questions (a seeded sample of" in console.export_text()
    again = evaluate(EvalConfig(test=str(test), adapters=[str(run)], systems=("retrieval",), limit=4))
    assert [p.question for p in again.predictions] == [p.question for p in picked.predictions]
    every = evaluate(EvalConfig(test=str(test), adapters=[str(run)], systems=("retrieval",), limit=0))
    assert [p.intent for p in every.predictions][:6] == ["refund"] * 6 and "heldout_order" not in every.source
    # the run's own split, already in that order, is scored alike whether --test names it or evaluate finds it
    found = evaluate(EvalConfig(adapters=[str(run)], systems=("retrieval",), limit=3))
    named = evaluate(EvalConfig(test=str(run / "data" / "test.jsonl"), adapters=[str(run)], systems=("retrieval",),
                                limit=3))
    assert found.source["heldout_questions"] > 3 and "heldout_order" not in named.source
    assert [p.question for p in named.predictions] == [p.question for p in found.predictions]


def test_leakage_is_flagged(tmp_path, tiny_run):
    data, run = tiny_run
    cfg = EvalConfig(test=str(run / "data" / "train.jsonl"), adapters=[str(run)], systems=("retrieval",),
                     output=str(tmp_path / "leak"))
    run_evaluation(cfg)
    results = json.loads((tmp_path / "leak" / "results.json").read_text())
    assert results["source"]["leaked_test_questions"] == results["test_size"] > 0
    assert "Warning" in (tmp_path / "leak" / "report.md").read_text()


def test_bad_evaluation_input(tmp_path, tiny_run):
    data, run = tiny_run
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")  # no reference answer
    with pytest.raises(EcombotError, match="test set is empty"):
        evaluate(EvalConfig(test=str(empty), systems=("base",)))
    with pytest.raises(EcombotError, match="need training data"):
        evaluate(EvalConfig(test=str(run / "data" / "test.jsonl"), systems=("retrieval",)))
    with pytest.raises(EcombotError, match="unknown system"):
        evaluate(EvalConfig(systems=("oracle",)))


def test_adapter_anatomy(tiny_run, tiny_model_dir):
    _, run = tiny_run
    anatomy = inspect_adapter(run)
    assert anatomy["rank"] == 16 and anatomy["trainable_parameters"] > 0
    names = [m["name"] for m in anatomy["modules"]]
    assert names[0].startswith("model.layers.0.") and names[-1].startswith("model.layers.1.")
    for m in anatomy["modules"]:
        assert len(m["singular_values"]) == 16 and 0 <= m["effective_rank"] <= 16 and m["relative_norm"] >= 0


def test_generate_all_skips_given_answers_and_shows_progress_past_one_batch(capsys):
    """Given answers (handoffs, stored answers) are not generated; the rest go in batches, and more than one batch
    shows a progress bar with the system's name (a store's hundreds of test questions are minutes per system)."""
    from ecombot.evaluate.run import generate_all
    from scripted_engine import ScriptedEngine

    engine = ScriptedEngine("Here you go.")
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(7)]
    given = [None, "stored", None, None, None, "handoff", None]
    answered = generate_all(engine, prompts, "support", 2, given, label="shop-bot+knowledge")
    assert engine.batches == [2, 2, 1]
    assert [m[0]["content"] for m in engine.seen] == ["question 0", "question 2", "question 3", "question 4",
                                                       "question 6"]
    assert answered.answers == ["Here you go.", "stored", "Here you go.", "Here you go.", "Here you go.", "handoff",
                                "Here you go."]
    assert answered.new_tokens[1] == answered.new_tokens[5] == 0 and answered.latency_s[1] == 0.0
    progress = capsys.readouterr().err
    assert "shop-bot+knowledge" in progress and "5/5" in progress
    generate_all(engine, prompts[:2], "support", 2, label="one batch")
    assert "one batch" not in capsys.readouterr().err  # a set that fits one batch stays quiet


def test_answers_stopped_by_the_token_limit_are_told_from_answers_that_ended():
    from scripted_engine import ScriptedEngine

    from ecombot.evaluate.run import generate_all

    ask = [[{"role": "user", "content": "Where is my order?"}]] * 3
    given = [None, "Our stored answer.", None]  # a stored answer is not generated: never cut
    ended = generate_all(ScriptedEngine("It left today."), ask, None, 2, given)
    assert ended.cut == [False, False, False] and ended.answers[1] == "Our stored answer."
    rambling = generate_all(ScriptedEngine(" ".join(["more"] * 60)), ask, None, 2, given)  # past its 50 steps
    assert rambling.cut == [True, False, True] and rambling.new_tokens == [50, 0, 50]
