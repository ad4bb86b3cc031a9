"""Evaluation of grounded answers: fact extraction and metrics on constructed examples, the built-in data's slices,
and the grounded systems wired end to end on the tiny model (an echoing engine shows what each prompt held)."""

import json
import shutil

import numpy as np
import pytest

from ecombot.chat import TransformersEngine
from ecombot.data import UNSEEN_INTENTS, prepare
from ecombot.evaluate import metrics
from ecombot.evaluate.slices import apply_edits, builtin_slices, changed_by, policy_edits, unseen_topics
from ecombot.knowledge import DEFAULT_HANDOFF, REUSE_THRESHOLD

# --- facts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, facts", [
    ("Standard shipping: 3–5 business days, $4.95, free on orders over $50.", {"3-5 business day", "$4.95", "$50"}),
    ("it costs 4.95 dollars and takes 3 to 5 business days", {"$4.95", "3-5 business day"}),
    ("$50.00 or $1,250.50", {"$50", "$1250.5"}),
    ("Live chat: 8 am–8 pm Monday to Friday, 10 a.m. to 6 pm Saturday.", {"8 am", "8 pm", "10 am", "6 pm"}),
    ("order before 2 pm, 2pm, 14:00 or 2:30 pm", {"2 pm", "2:30 pm"}),
    ("Phone: 1-800-555-0142 or 800.555.0142", {"8005550142"}),
    ("E-mail Support@HarborAndPine.example.", {"support@harborandpine.example"}),
    ("see https://www.harborandpine.example/help. or www.example.com/x,", {"harborandpine.example/help",
                                                                          "example.com/x"}),
    ("a 1-year warranty, 10% off or 10 percent, 4 interest-free payments", {"1 year", "10%", "4 payment"}),
    ("valid for 60 minutes; a 30-day window; within 1 business day", {"60 minute", "30 day", "1 business day"}),
    ("order 12345 and 1,000 points", {"12345", "1000"}),
    ("ships in 3 working days, 4 to 6 working days; 75 euros or 75 EUR, 20 pounds", {"3 working day",
                                                                                   "4-6 working day", "$75", "$20"}),
    ("step 2 of 3, {{Order Number}}, 3 daysx", set()),  # single digits without a unit are no facts
])
def test_extract_facts(text, facts):
    assert metrics.extract_facts(text) == facts


def test_fact_accuracy_and_invented_facts_on_constructed_answers():
    refs = ["Returns are accepted within 30 days; the label costs $4.95.", "Gift cards never expire.",
            "Call 1-800-555-0142 between 8 am and 8 pm."]
    answers = ["You have 30 days to return it, and the label is free.", "They expire after 12 months.",
               "Call 800 555 0142 from 8 am to 8 pm, or write to help@shop.example."]
    assert metrics.fact_accuracy(answers, refs) == [0.5, None, 1.0]  # no fact in the second reference: excluded
    knowledge = metrics.extract_facts("Privacy: help@shop.example")
    # answer 1: "30 day" is the reference's; 2: "12 month" is nowhere; 3: the e-mail is in the knowledge
    assert metrics.invented_fact_rate(answers, refs, knowledge) == [0.0, 1.0, 0.0]
    assert metrics.invented_fact_rate(answers, refs, set()) == [0.0, 1.0, 0.25]
    assert metrics.invented_fact_rate(["No idea, sorry."], refs[:1], set()) == [None]


def test_handoff_precision_recall_and_false_handoffs():
    predicted = [True, True, False, True, False, False]
    truth = [True, False, True, True, False, False]
    outcomes = metrics.handoff_outcomes(predicted, truth)
    indices = metrics.bootstrap_indices(len(truth), seed=1)
    estimates = {name: metrics.subset_mean_estimate(values, indices) for name, values in outcomes.items()}
    assert estimates["handoff_precision"].value == pytest.approx(2 / 3)  # 2 of the 3 handoffs were right
    assert estimates["handoff_recall"].value == pytest.approx(2 / 3)  # 2 of the 3 uncovered questions handed over
    assert estimates["false_handoffs"].value == pytest.approx(1 / 3)  # 1 of the 3 covered questions handed over
    for e in estimates.values():
        assert 0 <= e.low <= e.value <= e.high <= 1
    assert metrics.subset_mean_estimate([None, None], indices[:, :2] % 2) is None


def test_subset_mean_uses_the_shared_resamples():
    values = [1.0, None, 0.0, None]
    indices = np.array([[0, 0, 1, 3], [2, 2, 2, 1], [1, 3, 1, 3], [0, 2, 1, 1]])
    est = metrics.subset_mean_estimate(values, indices)
    # resample 3 holds no item with a value and is left out; the others average 1, 0 and 0.5
    assert est.value == 0.5
    assert [est.low, est.high] == pytest.approx(np.percentile([1.0, 0.0, 0.5], [2.5, 97.5]).tolist())


# --- the built-in data's slices ----------------------------------------------------------------------------------

def test_unseen_topics_are_held_out_intents_sampled_per_intent():
    picked = unseen_topics(seed=42)
    assert len(picked) == 36 and {c.intent for c in picked} == set(UNSEEN_INTENTS)
    assert all(sum(c.intent == i for c in picked) == 12 for i in UNSEEN_INTENTS)
    assert [c.question for c in unseen_topics(seed=42)] == [c.question for c in picked]
    trained = {c.question for c in prepare(None).split.train}
    assert not trained & {c.question for c in picked}
    assert {c.intent for c in picked[:6]} == set(UNSEEN_INTENTS)  # shuffled: a --limit still asks each intent


def test_policy_edit_slice_carries_the_new_values():
    from ecombot.data.builtin import policy_text

    edits = policy_edits()
    test = prepare(None).split.test
    changed = changed_by(test, edits)
    assert 25 <= len(changed) <= 60
    for conv in changed:
        assert apply_edits(conv.answer, edits) == conv.answer  # already edited
        assert not any(old in m["content"] for m in conv.messages for old, _ in edits)
        assert any(new in conv.answer for _, new in edits)
    policy = apply_edits(policy_text(), edits)
    for fact in ("within 45 days of delivery", "$5.95", "over $75", "2-year limited warranty",
                 "completed within 30 days"):  # the account deletion window is not the return window
        assert fact in policy
    slices = builtin_slices(test, seed=42, limit=5)
    assert [(s.name, len(s.test)) for s in slices] == [("unseen_topics", 5), ("policy_edits", 5), ("not_covered", 5)]
    assert slices[1].edits == edits and all(c.answer == DEFAULT_HANDOFF for c in slices[2].test)


def test_edited_knowledge_is_searched_with_the_new_values():
    from ecombot.evaluate.grounded import StoreKnowledge
    from ecombot.knowledge import Grounder, Passage, Retriever

    passages = [Passage("policy.md", "Shipping", 3, "Standard shipping: 3–5 business days, $4.95."),
                Passage("data: train.jsonl", "shipping_cost", 1, "Standard shipping is $4.95.",
                        "How much is shipping?"),
                Passage("policy.md", "Accounts", 9, "Password reset links are valid for 60 minutes.")]
    retriever = Retriever(passages)
    knowledge = StoreKnowledge(passages, DEFAULT_HANDOFF, Grounder(retriever, 2), {"name": "test"})
    edited = knowledge.edited([("$4.95", "$5.95")])
    assert "$5.95" in edited.facts and "$4.95" not in edited.facts and "$4.95" in knowledge.facts
    assert knowledge.edited([]) is knowledge
    hits = edited.grounder.ground([{"role": "user", "content": "How much is shipping?"}]).hits
    assert all("$5.95" in h.passage.text for h in hits) and edited.grounder.retriever.threshold == retriever.threshold
    # a Q&A pair's vector is of its question, which did not change: kept, not embedded again
    assert np.array_equal(edited.grounder.retriever.vectors[1], retriever.vectors[1])


# --- grounded systems end to end on the tiny model ---------------------------------------------------------------

def echo_generate(engine, conversations, adapter=None, grammars=None):
    """TransformersEngine.generate for these tests: answers every conversation with its last user turn (so a test
    sees the passages placed there), noting what it was asked to generate in `echoed`."""
    from ecombot.chat import Generation

    assert grammars is None  # support answers are never constrained
    echoed.extend(conversations)
    return [Generation(c[-1]["content"], 5, 3, "stop") for c in conversations]


echoed: list[list[dict]] = []


@pytest.fixture(scope="module")
def small_run(tiny_run, tmp_path_factory):
    """The tiny run, recorded as trained on the built-in data (as the tests below pretend: `small_builtin`), so that
    evaluate scores the built-in data and its slices, not the run's own kept split."""
    run = tmp_path_factory.mktemp("builtin-run") / "run"
    shutil.copytree(tiny_run[1], run)
    info = json.loads((run / "run_config.json").read_text())
    info["config"]["data"] = None
    (run / "run_config.json").write_text(json.dumps(info))
    return run


@pytest.fixture()
def small_builtin(monkeypatch):
    """A small stand-in for the built-in data's split (every intent of the policy edits), so tests embed little."""
    from ecombot.data import builtin_path
    from ecombot.evaluate import run as run_module

    split = prepare(None).split
    test = [c for c in split.test if c.intent in ("shipping_cost", "return_item")][:8]
    test += [c for c in split.test if c.intent == "track_order"][:2]
    train = [c for c in split.train if c.intent in ("shipping_cost", "return_item", "track_order", "reset_password")]
    monkeypatch.setattr(run_module, "load_sets", lambda cfg: (test, train[:40], {"data": str(builtin_path())}))
    return test, train[:40]


def test_grounded_systems_on_the_builtin_data_and_its_slices(tmp_path, monkeypatch, small_run, tiny_model_dir,
                                                             small_builtin):
    from ecombot.data.builtin import policy_text
    from ecombot.evaluate import EvalConfig, print_table, run_evaluation
    from ecombot.knowledge import KnowledgeBase, qa_passages

    test, train = small_builtin
    edited = len(changed_by(test, policy_edits()))
    assert edited >= 4
    monkeypatch.setattr(TransformersEngine, "generate", echo_generate)
    echoed.clear()
    (tmp_path / "policy.md").write_text(policy_text())
    db = f"sqlite:///{tmp_path / 'kb.db'}"
    kb = KnowledgeBase(db, "store")
    kb.add_files([tmp_path / "policy.md"])
    kb.add_passages("data: train.jsonl", qa_passages(train, "data: train.jsonl"))
    leaked = next(c for c in test if len(c.messages) == 2)
    kb.add_passages("data: leaked", qa_passages([leaked], "data: leaked"))
    out = tmp_path / "eval"
    cfg = EvalConfig(adapters=[str(small_run)], model=str(tiny_model_dir), knowledge="store", db=db, limit=6,
                     systems=("retrieval", "finetuned", "grounded", "base+knowledge"), output=str(out))
    result = run_evaluation(cfg)

    assert set(result.systems) == {"retrieval", "run", "run+knowledge", "base+knowledge"}
    assert {name: s.test_size for name, s in result.slices.items()} == {"unseen_topics": 6,
                                                                         "policy_edits": min(6, edited),
                                                                         "not_covered": 6}
    assert result.knowledge["name"] == "store" and result.knowledge["passages"] == len(kb.passages())
    by_slice = {}
    for p in result.predictions:
        by_slice.setdefault(p.slice, []).append(p)
    # grounded answers echo their prompt: the passages sit above the question, and the sources are recorded
    for p in by_slice["heldout"] + by_slice["unseen_topics"]:
        answer = p.answers["run+knowledge"]
        if answer != DEFAULT_HANDOFF:
            assert answer.startswith("Store knowledge:\n[1] ") and answer.endswith(f"Customer question: {p.question}")
            assert len(p.sources["run+knowledge"]) == 3 and "run" not in p.sources
        assert p.answers["run"] == p.question  # the fine-tuned system saw the question alone
    # a test item's own pair (leaked into the knowledge base here) is not among its passages
    [own] = [p for p in by_slice["heldout"] if p.question == leaked.question]
    assert own.sources["run+knowledge"] and all(s["source"] != "data: leaked" for s in own.sources["run+knowledge"])
    # policy edits: the knowledge the grounded systems saw and the references carry the new values
    for p in by_slice["policy_edits"]:
        assert any(new in p.reference for _, new in policy_edits())
        shown = p.answers["run+knowledge"].split("Customer question:")[0]
        assert not any(old in shown for old, _ in policy_edits())
    # not covered: the handoff, without generating; the others were generated once per grounded system
    handed = [p for p in result.predictions if p.answers["run+knowledge"] == DEFAULT_HANDOFF]
    assert handed and any(p.slice == "not_covered" for p in handed)
    grounded_prompts = [c[-1]["content"] for c in echoed if c[-1]["content"].startswith("Store")]
    assert len(grounded_prompts) == 2 * (len(result.predictions) - len(handed))
    assert not any(prompt.endswith(f"Customer question: {p.question}") for prompt in grounded_prompts for p in handed)
    nc = result.slices["not_covered"].systems
    assert nc["run+knowledge"].handoff_recall.value == pytest.approx(
        np.mean([p.answers["run+knowledge"] == DEFAULT_HANDOFF for p in by_slice["not_covered"]]))
    assert nc["run"].handoff_recall.value == 0.0 and nc["run"].fact_accuracy is None  # no fact in the handoff
    assert result.systems["retrieval"].handoff_recall is None  # no held-out reference is the handoff

    results = json.loads((out / "results.json").read_text())
    assert set(results["slices"]) == {"unseen_topics", "policy_edits", "not_covered"}
    assert set(results["handoff"]) == set(results["systems"])
    for name in ("fact_accuracy", "invented_fact_rate", "handoff_precision", "false_handoffs"):
        assert name in results["slices"]["policy_edits"]["systems"]["run+knowledge"]
    report = (out / "report.md").read_text()
    from ecombot.evaluate.report import TABLE_METRICS, digits_for, fmt

    for name, scores in result.slices.items():
        assert f"### {name} ({scores.test_size} questions)" in report
        system = scores.systems["run+knowledge"]
        assert "| " + " | ".join(["run+knowledge"] + [fmt(getattr(system, m), digits_for(m))
                                                       for m in TABLE_METRICS]) + " |" in report
    assert "### Handoffs over the held-out set and every slice" in report and "(sources: " in report
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {line["slice"] for line in lines} == {"heldout", "unseen_topics", "policy_edits", "not_covered"}
    from rich.console import Console

    console = Console(record=True, width=250)
    print_table(result, console)
    assert f"slice policy_edits: {min(6, edited)} questions" in console.export_text()


def test_grounded_systems_give_a_stored_answer_to_a_question_it_answers_and_count_it(tmp_path, monkeypatch, small_run,
                                                                                     tiny_model_dir, small_builtin):
    from ecombot.evaluate import EvalConfig, run_evaluation
    from ecombot.knowledge import KnowledgeBase, Passage, qa_passages

    test, train = small_builtin
    monkeypatch.setattr(TransformersEngine, "generate", echo_generate)
    db = f"sqlite:///{tmp_path / 'kb.db'}"
    kb = KnowledgeBase(db, "store")
    kb.add_passages("data: train.jsonl", qa_passages(train, "data: train.jsonl"))
    # the store answered this very question before, in other words (not the test item's own pair)
    asked = next(c for c in test[:3] if len(c.messages) == 2)
    stored = "STORED: " + asked.answer
    kb.add_passages("data: faq.json", [Passage("data: faq.json", asked.intent, 1, stored, asked.question)])
    results = {}
    for reuse in (True, False):
        echoed.clear()
        cfg = EvalConfig(adapters=[str(small_run)], model=str(tiny_model_dir), knowledge="store", db=db, limit=3,
                         systems=("grounded",), slices=False, reuse_answers=reuse, output=str(tmp_path / f"e{reuse}"))
        results[reuse] = run_evaluation(cfg), [c[-1]["content"] for c in echoed]
    (on, generated_on), (off, generated_off) = results[True], results[False]
    reused = [p for p in on.predictions if p.sources["run+knowledge"][0].get("reused")]
    assert [p.question for p in reused] == [asked.question] and reused[0].answers["run+knowledge"] == stored
    assert [s["source"] for s in reused[0].sources["run+knowledge"]] == ["data: faq.json"]
    assert not any(prompt.endswith(f"Customer question: {asked.question}") for prompt in generated_on)
    assert any(prompt.endswith(f"Customer question: {asked.question}") for prompt in generated_off)
    assert on.systems["run+knowledge"].stored_answers.value == pytest.approx(1 / 3)
    assert off.systems["run+knowledge"].stored_answers.value == 0.0
    assert (on.knowledge["reuse_threshold"], off.knowledge["reuse_threshold"]) == (REUSE_THRESHOLD, None)
    assert not any(p.sources["run+knowledge"][0].get("reused") for p in off.predictions)
    assert "| stored_answers |" in (tmp_path / "eTrue" / "report.md").read_text()


def test_no_slices_and_no_knowledge(tmp_path, monkeypatch, small_builtin):
    from ecombot.evaluate import EvalConfig, evaluate

    monkeypatch.setenv("ECOMBOT_HOME", str(tmp_path))
    monkeypatch.delenv("ECOMBOT_DB")
    result = evaluate(EvalConfig(systems=("retrieval", "base+knowledge"), limit=3, slices=False))
    assert set(result.systems) == {"retrieval"} and result.slices == {}
    assert result.knowledge == {"name": "default", "db": f"sqlite:///{tmp_path / 'ecombot.db'}", "passages": 0}
    result = evaluate(EvalConfig(systems=("retrieval",), limit=3, knowledge="none"))
    assert set(result.slices) == {"unseen_topics", "policy_edits", "not_covered"}
    assert all(s.test_size == 3 for s in result.slices.values())
    # without a knowledge base the training answers and policy.md are what the store told the systems
    assert result.slices["policy_edits"].systems["retrieval"].invented_fact_rate is not None


def test_grounded_answers_go_through_the_fact_check_as_chat_and_serve_give_them(tmp_path, monkeypatch, small_run,
                                                                               tiny_model_dir, small_builtin):
    from ecombot.chat import Generation
    from ecombot.evaluate import EvalConfig, run_evaluation
    from ecombot.knowledge import KnowledgeBase, qa_passages

    _, train = small_builtin
    invented = "Thanks for asking. It costs $987.65."  # a price the built-in store never states

    def generate(engine, conversations, adapter=None, grammars=None):
        return [Generation(invented, 5, 3, "stop") for _ in conversations]

    monkeypatch.setattr(TransformersEngine, "generate", generate)
    db = f"sqlite:///{tmp_path / 'kb.db'}"
    KnowledgeBase(db, "store").add_passages("data: train.jsonl", qa_passages(train, "data: train.jsonl"))
    results = {check: run_evaluation(EvalConfig(adapters=[str(small_run)], model=str(tiny_model_dir), knowledge="store",
                                                db=db, limit=4, systems=("grounded",), slices=False,
                                                reuse_answers=False, check_facts=check,
                                                output=str(tmp_path / f"e{check}")))
               for check in (True, False)}
    on, off = results[True], results[False]
    cut = [i for i, p in enumerate(on.predictions) if p.left_out]  # the rest were not covered: the handoff, given
    assert cut and on.systems["run+knowledge"].facts_left_out.value == pytest.approx(len(cut) / 4)
    for i, (checked, unchecked) in enumerate(zip(on.predictions, off.predictions)):
        answer = checked.answers["run+knowledge"]
        if i in cut:
            assert checked.left_out == {"run+knowledge": ["It costs $987.65."]}
            assert answer.startswith("Thanks for asking. ") and "987.65" not in answer
            assert unchecked.answers["run+knowledge"] == invented and not unchecked.left_out
        else:
            assert answer == unchecked.answers["run+knowledge"] and "987.65" not in answer
    assert on.systems["run+knowledge"].false_handoffs.value == 1.0  # a cut answer hands over
    assert off.systems["run+knowledge"].facts_left_out is None
    assert "*left out by the fact check*: It costs $987.65." in (tmp_path / "eTrue" / "report.md").read_text()
