"""The catalog: products read from CSV / JSON / JSON Lines with errors at their row and field, the built-in catalog,
recommendation requests with known answers, and the plain search baseline (budget filter, real SKUs)."""

from __future__ import annotations

import json
import re

import pytest

from ecombot.catalog import (CatalogSearch, Product, builtin_catalog_path, price_limit, read_catalog,
                             recommendation_requests)
from ecombot.catalog.requests import meets
from ecombot.errors import DataError, EcombotError

CSV = """SKU,Title,Category,Price,Material,Colour,Description,Related
T-1,Oak side table,Side table,$129.99,oak,natural oak,"A small oak table.
Two lines.",T-2
T-2,Walnut side table,side table,189,walnut,,Walnut.,T-1;T-3
T-3,Wool rug,rug,249.50,wool,grey,,
"""


@pytest.fixture(scope="module")
def builtin():
    return read_catalog(builtin_catalog_path())


def test_a_csv_catalog_reads_required_fields_prices_attributes_and_related_skus(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text(CSV)
    products = read_catalog(path)
    assert [p.sku for p in products] == ["T-1", "T-2", "T-3"]
    first = products[0]
    assert (first.title, first.category, first.price) == ("Oak side table", "side table", 129.99)
    assert first.attributes == {"material": "oak", "colour": "natural oak"}
    assert first.description == "A small oak table.\nTwo lines."
    assert products[1].related == ("T-1", "T-3") and products[1].price == 189.0
    assert "colour" not in products[1].attributes  # an empty cell is no attribute
    assert products[2].source == "catalog.csv:row 4 (line 5)"  # the quoted description spans two lines


def test_json_list_products_document_and_json_lines_read_the_same(tmp_path):
    rows = [{"sku": "A", "name": "Mug", "category": "Mug set", "price": "12.00",
             "attributes": {"material": "stoneware", "colours": ["white", "blue"]}, "related": ["B"]},
            {"sku": "B", "title": "Plate", "category": "plates", "price": 9, "finish": "matte"}]
    forms = {"list.json": json.dumps(rows), "doc.json": json.dumps({"products": rows}),
             "lines.jsonl": "\n".join(json.dumps(r) for r in rows)}
    read = {}
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        read[name] = [p.to_json() for p in read_catalog(tmp_path / name)]
    assert read["list.json"] == read["doc.json"] == read["lines.jsonl"]
    mug, plate = read["list.json"]
    assert mug["attributes"] == {"material": "stoneware", "colours": "white, blue"} and mug["related"] == ["B"]
    assert plate["title"] == "Plate" and plate["attributes"] == {"finish": "matte"}


@pytest.mark.parametrize("text, where", [
    ("sku,title,category\nA,Mug,mugs\n", r"catalog.csv:row 1: field 'price': missing required column"),
    ("sku,title,category,price\nA,Mug,mugs,12\nB,Cup,mugs,cheap\n",
     r"catalog.csv:row 3: field 'price': expected a price such as 129.99 or \$129.99, got 'cheap'"),
    ("sku,title,category,price\nA,Mug,mugs,-3\n", r"row 2: field 'price': expected a price"),
    ("sku,title,category,price\nA,Mug,mugs,0\n", r"row 2: field 'price': must be a positive amount"),
    ("sku,title,category,price\nA,Mug,mugs,12\nA,Cup,mugs,9\n",
     r"row 3: field 'sku': duplicate SKU 'A' \(first at row 2\)"),
    ("sku,title,category,price\nA,,mugs,12\n", r"row 2: field 'title': missing required field"),
    ("sku,title,category,price,related\nA,Mug,mugs,12,Z\n", r"row 2: field 'related': SKU 'Z' is not in the catalog"),
    ("sku,title,category,price\nA,Mug,mugs,12,extra\n", r"row 2: 5 cells but the header has 4 columns"),
])
def test_a_bad_catalog_row_is_an_error_naming_the_row_and_field(tmp_path, text, where):
    path = tmp_path / "catalog.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=where):
        read_catalog(path)


@pytest.mark.parametrize("text, where", [
    ('{"sku": "A", "title": "Mug", "category": "mugs", "price": 5}\n{"sku": "B", "title": "Cup", "price": 4}\n',
     r"line 2: field 'category': missing required field"),
    ('[{"sku": "A", "title": "Mug", "category": "mugs", "price": true}]', r"item 1: field 'price'"),
    ('[{"sku": "A", "title": "Mug", "category": "mugs", "price": 5, "attributes": ["x"]}]',
     r"item 1: field 'attributes': expected an object"),
    ('[{"sku": "A", "title": "Mug", "category": "mugs", "price": 5, "size": {"w": 1}}]',
     r"item 1: field 'size': expected text, got dict"),
    ('{"items": []}', r"expected a list of products"),
    ("[]", r"the catalog holds no products"),
])
def test_a_bad_json_product_is_an_error_naming_its_place_and_field(tmp_path, text, where):
    path = tmp_path / "catalog.json"
    path.write_text(text)
    with pytest.raises(DataError, match=where):
        read_catalog(path)


def test_the_builtin_catalog_is_consistent_and_its_descriptions_state_the_attributes(builtin):
    assert len(builtin) == 320 and len({p.sku for p in builtin}) == 320
    assert len({p.category for p in builtin}) == 16
    skus = {p.sku for p in builtin}
    assert all(p.related and set(p.related) <= skus and p.sku not in p.related for p in builtin)
    for p in builtin:  # the reference copy states what the product is, and the right price
        text = p.description.lower()
        assert p.attribute("material").lower() in text and p.attribute("colour") in text, p.sku
        assert p.attribute("dimensions").lower() in text and f"${p.price:.2f}" in p.description, p.sku


def test_requests_know_every_product_that_meets_their_constraints(builtin):
    requests = recommendation_requests(builtin, 60, seed=3)
    assert len(requests) == 60 and len({r.text for r in requests}) > 55
    assert requests == recommendation_requests(builtin, 60, seed=3)  # seeded
    for request in requests:
        expected = {p.sku for p in builtin if all(meets(p, request.constraints).values())}
        assert request.answers == expected and expected
        assert request.constraints["category"] in request.text
        assert len(request.constraints) >= 2  # the category and at least one more
        if "max_price" in request.constraints:
            assert price_limit(request.text) == request.constraints["max_price"]
        else:
            assert price_limit(request.text) is None
        for name in ("material", "colour"):
            if name in request.constraints:
                assert request.constraints[name] in request.text


@pytest.mark.parametrize("text, limit", [("a lamp under $80", 80.0), ("no more than $45.50 please", 45.5),
                                         ("something below £30", 30.0), ("a 5 x 8 ft rug", None),
                                         ("costs $20 and up", None)])
def test_price_limit_reads_a_stated_budget(text, limit):
    assert price_limit(text) == limit


def test_search_recommends_real_products_within_the_budget_and_finds_the_asked_ones(builtin):
    requests = recommendation_requests(builtin, 40, seed=5)
    found = CatalogSearch(builtin).recommend([r.text for r in requests], k=3)
    by_sku = {p.sku: p for p in builtin}
    hits = 0
    for request, recs in zip(requests, found):
        assert len(recs) == 3 and all(rec.sku in by_sku for rec in recs)
        limit = request.constraints.get("max_price")
        assert limit is None or all(by_sku[rec.sku].price <= limit for rec in recs)
        assert all(re.search(r"\$\d+\.\d\d$", rec.reason) for rec in recs)
        hits += recs[0].sku in request.answers
    assert hits / len(requests) >= 0.8  # benchmarks/recommend.py: 93.7% on 300 requests


def test_search_returns_fewer_products_when_the_budget_leaves_fewer():
    products = [Product("A", "Oak table", "side table", 100.0, {"material": "oak"}),
                Product("B", "Pine table", "side table", 60.0, {"material": "pine"}),
                Product("C", "Wool rug", "rug", 300.0, {"material": "wool"})]
    recs = CatalogSearch(products).recommend(["a table under $70"], k=3)[0]
    assert [r.sku for r in recs] == ["B"]


# --- the product-copy task ----------------------------------------------------------------------------------------

def test_copy_prompt_lists_every_field_but_the_sku_and_conversations_skip_products_without_copy(builtin):
    from ecombot.catalog.copy import copy_conversations, copy_prompt

    product = builtin[0]
    prompt = copy_prompt(product)
    assert product.sku not in prompt and f"Price: ${product.price:.2f}" in prompt
    assert all(f"{name.capitalize()}: {value}" in prompt for name, value in product.attributes.items())
    bare = Product("X-1", "Bare mug", "mug set", 10.0, {"material": "stoneware"})
    convs, skipped = copy_conversations(builtin[:5] + [bare])
    assert skipped == 1 and len(convs) == 5
    assert convs[0].question == prompt and convs[0].answer == product.description
    assert convs[0].intent == product.category  # the split keeps every category in every part


def test_copy_checks_count_coverage_contradictions_and_invented_facts(builtin):
    from ecombot.catalog.copy import categorical_values, copy_prompt
    from ecombot.evaluate.metrics import copy_checks

    alternatives = categorical_values(builtin)
    assert "small" in alternatives["side table"] and "small" not in alternatives["mug set"]
    assert "care" not in {n for p in builtin for n in p.attributes if p.attribute(n).lower() in alternatives[p.category]}
    for product in builtin:  # the reference copy states everything and contradicts or invents nothing
        checks = copy_checks(product.description, product.price, product.attributes, copy_prompt(product),
                             alternatives[product.category])
        assert checks == {"coverage": 1.0, "contradicted": 0.0, "invented": 0.0}, product.sku
    table = next(p for p in builtin if p.category == "side table" and p.attribute("material") == "walnut")
    other = "oak" if "oak" not in table.title.lower() else "pine"
    wrong = f"A {other} side table in {table.attribute('colour')}, 99 cm tall, for $1.00."
    checks = copy_checks(wrong, table.price, table.attributes, copy_prompt(table), alternatives[table.category])
    # named: the other material, the right colour, the wrong price -> 2 of 3 contradict
    assert checks["contradicted"] == pytest.approx(2 / 3)
    assert checks["invented"] == pytest.approx(2 / 2)  # "99" and "$1" are nowhere in the product's fields
    assert checks["coverage"] == pytest.approx(1 / (len(table.attributes) + 1))  # only the colour is stated


def test_copy_task_trains_from_a_catalog_and_evaluates_attribute_by_attribute(tiny_model_dir, tmp_path, builtin,
                                                                              write_catalog):
    from typer.testing import CliRunner

    from ecombot.cli import app
    from ecombot.errors import EcombotError

    catalog = write_catalog(tmp_path / "catalog.jsonl", builtin[:60])
    run = tmp_path / "copy-run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--task", "copy", "--catalog", str(catalog), "--model", str(tiny_model_dir),
                                 "--output", str(run), "--max-steps", "2", "--batch-size", "4", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "copy task: 60 products of" in result.output
    config = json.loads((run / "run_config.json").read_text())["config"]
    assert config["task"] == "copy" and config["knowledge"] == "none"
    assert "# ecombot copy adapter (lora)" in (run / "README.md").read_text()
    test = [json.loads(line) for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    assert test and all(t["messages"][0]["content"].startswith("Write the product description") for t in test)

    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--task", "copy", "--adapter", str(run), "--output", str(out),
                                 "--max-new-tokens", "8", "--fewshot-k", "1"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "results.json").read_text())
    assert scores["products"] == len(test) and set(scores["systems"]) == {"base-fewshot", "copy-run"}
    assert scores["max_new_tokens"] == 8  # the limit each description was written under, and how often it cut one
    for system in scores["systems"].values():
        coverage = system["attribute_coverage"]
        assert 0 <= coverage["ci95"][0] <= coverage["value"] <= coverage["ci95"][1] <= 1
        assert system["cut_at_limit"]["value"] == 1.0  # a random model never ends a description within 8 tokens
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len(test) and all(p["sku"].startswith("HP-") for p in predictions)
    assert "| copy-run |" in (out / "report.md").read_text()
    chatted = runner.invoke(app, ["chat", "--adapter", str(run), "--once", "an oak stool"])
    assert isinstance(chatted.exception, EcombotError) and "is a copy adapter: chat talks to support" in str(
        chatted.exception)


def test_one_adapter_learns_several_tasks_each_split_as_its_own_run_splits_it(tiny_model_dir, small_dataset, tmp_path,
                                                                                builtin, write_catalog, capsys):
    """`train --task recommend,support,copy`: one adapter on the three tasks' data, each task split on its own (the
    test set a run of that task alone holds out), support grounded and its split in data/ as for any support run,
    the catalog tasks' in data/TASK/ and never in the knowledge base; each task's evaluation reads its own split,
    and the server serves the adapter under each task's name."""
    from typer.testing import CliRunner

    from ecombot.catalog.copy import INSTRUCTION, copy_conversations
    from ecombot.catalog.recommend import REQUEST_HEADER
    from ecombot.cli import app
    from ecombot.config import load_config
    from ecombot.data import split_conversations
    from ecombot.errors import ConfigError
    from ecombot.knowledge import KnowledgeBase
    from ecombot.serve.tasks import CatalogTasks

    catalog = write_catalog(tmp_path / "catalog.jsonl", builtin[::8])
    run, db = tmp_path / "multi", f"sqlite:///{tmp_path / 'kb.db'}"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--task", "recommend,support,copy", "--catalog", str(catalog), "--data",
                                 str(small_dataset), "--knowledge", "shop", "--db", db, "--model", str(tiny_model_dir),
                                 "--output", str(run), "--max-steps", "2", "--batch-size", "4", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "run_config.json").read_text())["config"]
    assert config["task"] == "support,copy,recommend" and config["knowledge"] == "shop"

    def split(task):
        folder = run / "data" / task if task else run / "data"
        return {name: [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
                for name in ("train", "validation", "test")}
    support, copy, recommend = split(None), split("copy"), split("recommend")
    expected = split_conversations(copy_conversations(builtin[::8])[0], 0.1, 0.1, 42)
    assert [c["messages"] for c in copy["test"]] == [c.messages for c in expected.test]  # a copy run's test set
    assert all(c["messages"][0]["content"].startswith(INSTRUCTION) for s in copy.values() for c in s)
    assert all(REQUEST_HEADER in c["messages"][0]["content"] for s in recommend.values() for c in s)
    asked = [c["messages"][0]["content"] for s in support.values() for c in s]
    assert asked and not any(INSTRUCTION in q or REQUEST_HEADER in q for q in asked)
    said = capsys.readouterr().out + result.output
    assert (f"one adapter for 3 tasks: support {len(support['train'])}, copy {len(copy['train'])}, recommend "
            f"{len(recommend['train'])} training conversations") in said
    pairs = [p.question for p in KnowledgeBase(db, "shop").passages() if p.question]
    assert pairs and not any(INSTRUCTION in q or REQUEST_HEADER in q for q in pairs)  # only support's pairs
    card = (run / "README.md").read_text()
    assert "# ecombot multi-task adapter (support, copy, recommend) (lora)" in card
    assert f"The copy task's split (train/validation/test): {len(copy['train'])}/" in card

    out = tmp_path / "eval"
    for task, limit in (("copy", "0"), ("recommend", "2")):
        result = runner.invoke(app, ["evaluate", "--task", task, "--adapter", str(run), "--output", str(out),
                                     "--systems", "finetuned", "--max-new-tokens", "4", "--limit", limit])
        assert result.exit_code == 0, result.output
        scores = json.loads((out / "results.json").read_text())
        assert scores["products" if task == "copy" else "requests"] == (len(copy["test"]) if task == "copy" else 2)

    tasks = CatalogTasks.of_adapters([("support", run), ("copy", run), ("recommend", run)])
    assert [tasks.task(n) for n in ("support", "copy", "recommend")] == ["support", "copy", "recommend"]
    with pytest.raises(EcombotError, match="one adapter for 3 tasks .*--adapter copy="):
        CatalogTasks.of_adapters([("shop", run)])
    with pytest.raises(ConfigError, match="must be one of support, copy, recommend, or several"):
        load_config(None, task="copy,copy", catalog="builtin")
    with pytest.raises(ConfigError, match="the copy and recommend tasks need a catalog file"):
        load_config(None, task="support,copy,recommend")


def test_copy_task_errors_name_what_is_missing(tiny_model_dir, tiny_run, tmp_path):
    from ecombot.config import load_config
    from ecombot.errors import ConfigError, EcombotError
    from ecombot.evaluate.tasks import catalog_run

    with pytest.raises(ConfigError, match="the copy task needs a catalog file"):
        load_config(None, task="copy")
    with pytest.raises(ConfigError, match="task.*must be one of support, copy, recommend"):
        load_config(None, task="poems")
    with pytest.raises(ConfigError, match="'knowledge': the copy task trains without knowledge passages"):
        load_config(None, task="copy", catalog="builtin", knowledge="shop")
    with pytest.raises(ConfigError, match="'db': the recommend task uses no knowledge base"):
        load_config(None, task="recommend", catalog="builtin", db="sqlite:///kb.db")
    with pytest.raises(EcombotError, match="not a copy run"):
        catalog_run(str(tiny_run[1]), "copy")


# --- the recommendation task --------------------------------------------------------------------------------------

def test_recommend_targets_list_the_matching_candidates_in_search_order_or_say_none(builtin):
    from ecombot.catalog.recommend import NONE_MATCH, recommend_answer, recommend_prompt, with_candidates

    requests = recommendation_requests(builtin, 30, seed=7)
    for request, candidates in with_candidates(builtin, requests):
        assert len(candidates) == 8 and len({p.sku for p in candidates}) == 8
        prompt, answer = recommend_prompt(request.text, candidates), recommend_answer(request, candidates)
        assert prompt.endswith(f"Customer request: {request.text}")
        assert all(p.sku in prompt for p in candidates)
        matching = [p.sku for p in candidates if p.sku in request.answers][:3]
        if matching:
            assert [line.split(":", 1)[0] for line in answer.splitlines()] == matching
        else:
            assert answer == NONE_MATCH
    request = requests[0]
    assert recommend_answer(request, [p for p in builtin if p.sku not in request.answers][:8]) == NONE_MATCH


def test_the_answer_grammar_allows_every_training_target_and_nothing_naming_another_product(builtin, tiny_tokenizer):
    """Token by token, as the model decodes: each target the task trains on is allowed whole (then only a stop);
    another product's SKU, a fourth line, a misspelt SKU, an empty answer or a reason longer than its products' own
    reasons allow is refused where it starts."""
    from ecombot.catalog.recommend import (GRAMMARS, NONE_MATCH, REASON_SLACK, answer_grammar, answer_grammars,
                                           reason_limit, recommend_answer, with_candidates)
    from ecombot.catalog.search import reason
    from ecombot.chat.grammar import GrammarTokenizer, RowGrammars
    from ecombot.models import stop_token_ids

    stops = stop_token_ids(tiny_tokenizer)
    grammar_tokenizer = GrammarTokenizer(tiny_tokenizer, len(tiny_tokenizer), stops)

    def refused_at(text: str, skus: list[str], grammar: str | None = None) -> int | None:
        """The token index where the grammar (default: `answer_grammar(skus, 200)`) first refuses `text` (len: refused the
        stop after it; None: allowed)."""
        rows = RowGrammars(grammar_tokenizer, [grammar or answer_grammar(skus, 200)])
        ids = tiny_tokenizer.encode(text)
        for k in range(len(ids) + 1):
            allowed = rows.allowed(0, ids[:k])
            if not (allowed[ids[k]] if k < len(ids) else all(allowed[s] for s in stops)):
                return k
        return None

    targets = 0
    for request, candidates in with_candidates(builtin, recommendation_requests(builtin, 12, seed=3)):
        skus = [p.sku for p in candidates]
        answer = recommend_answer(request, candidates)
        grammar = answer_grammars("candidates", [candidates], builtin)[0]
        assert refused_at(answer, skus, grammar) is None, answer  # within the reason limit the run decodes with
        longest = max(candidates, key=lambda p: len(reason(p)))
        assert reason_limit(candidates) == len(reason(longest)) + REASON_SLACK
        rambling = f"{longest.sku}: {reason(longest)} {'and more ' * 8}"  # past the limit: refused, cut at it allowed
        assert refused_at(rambling, skus, grammar) is not None and refused_at(rambling, skus) is None
        assert refused_at(rambling[:len(longest.sku) + 2 + reason_limit(candidates)], skus, grammar) is None
        targets += answer != NONE_MATCH
        other = next(p.sku for p in builtin if p.sku not in skus)
        assert refused_at(f"{other}: {candidates[0].title}", skus) is not None
        assert refused_at(f"{skus[0][:-1]}X: misspelt", skus) is not None
        assert refused_at("\n".join(f"{s}: fits" for s in skus[:4]), skus) is not None  # at most three lines
        assert refused_at("", skus) == 0  # an empty answer is no answer
    assert targets >= 6  # most requests have products to name, not only "none matches"
    assert refused_at(NONE_MATCH, []) is None and refused_at("HP-01: x", []) == 0  # no candidates: only "none"
    odd = ["A\tB", 'Q"\\x', "N\x00", "AB:12"]  # SKUs a catalog may hold: each compiles, and only itself matches
    assert all(refused_at(f"{sku}: fits", odd) is None for sku in odd) and refused_at("A B: fits", odd) is not None
    assert refused_at(f"{odd[0]}: a\rQ: b", odd) is not None  # a reason is one line: no "\r" either

    candidates = builtin[:8]
    other = f"{builtin[100].sku}: not a candidate"
    by_mode = {mode: answer_grammars(mode, [candidates], builtin) for mode in GRAMMARS}
    assert by_mode["none"] is None
    assert by_mode["candidates"] == [answer_grammar([p.sku for p in candidates], reason_limit(candidates))]
    assert by_mode["catalog"] == [answer_grammar([p.sku for p in builtin], reason_limit(builtin))]
    rows = RowGrammars(grammar_tokenizer, by_mode["catalog"])
    ids = tiny_tokenizer.encode(other)
    assert all(rows.allowed(0, ids[:k])[ids[k]] for k in range(len(ids)))  # any product of the catalog


def test_parsed_recommendations_keep_candidates_only_once_and_count_the_rest(builtin):
    from ecombot.catalog.recommend import parse_recommendations

    candidates = builtin[:3]
    answer = (f"{builtin[1].sku}: nice\n{builtin[1].sku}: again\nHP-99999: invented\nno sku here\n"
              f"{builtin[200].sku}: real but not a candidate\n{builtin[0].sku}: fits")
    parsed = parse_recommendations(answer, candidates)
    assert parsed.skus == [builtin[1].sku, builtin[0].sku] and parsed.dropped == 2
    colons = [Product("AB-1", "Stool", "stool", 9.0, {}), Product("AB-1:2", "Bench", "bench", 9.0, {})]
    parsed = parse_recommendations("AB-1:2: fits\nAB-1 : also\nZZ-9: no", colons)  # a SKU may hold a colon
    assert (parsed.skus, parsed.dropped, parsed.lines) == (["AB-1:2", "AB-1"], 1, ["AB-1:2: fits", "AB-1 : also"])


def test_recommendation_scores_count_constraints_hits_and_unknown_skus(builtin):
    from ecombot.catalog.requests import score_recommendations

    request = next(r for r in recommendation_requests(builtin, 50, seed=1) if len(r.answers) >= 2)
    right = sorted(request.answers)
    wrong = next(p.sku for p in builtin if p.sku not in request.answers)
    scores = score_recommendations([request, request, request], [[right[0], wrong, "NOPE"], [wrong, right[1]], []],
                                   builtin, 3)
    assert scores["sku_exists"] == pytest.approx(4 / 5, abs=1e-4)
    assert scores["constraints_met"] == pytest.approx(2 / 5, abs=1e-4)
    assert scores["hit_at_1"] == pytest.approx(1 / 3, abs=1e-4) and scores["hit_at_k"] == pytest.approx(2 / 3, abs=1e-4)
    assert scores["empty"] == 1 and scores["returned_per_request"] == pytest.approx(5 / 3, abs=1e-4)


def test_recommend_task_trains_from_a_catalog_and_is_scored_against_the_search_baseline(tiny_model_dir, tmp_path,
                                                                                         builtin, write_catalog):
    from typer.testing import CliRunner

    from ecombot.catalog.recommend import NONE_MATCH
    from ecombot.cli import app
    from ecombot.errors import EcombotError

    catalog = write_catalog(tmp_path / "catalog.jsonl", builtin[::8])
    run = tmp_path / "rec-run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--task", "recommend", "--catalog", str(catalog), "--model",
                                 str(tiny_model_dir), "--output", str(run), "--max-steps", "2", "--batch-size", "4",
                                 "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "recommend task: 160 requests generated from the 40 products" in result.output
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--task", "recommend", "--adapter", str(run), "--output", str(out),
                                 "--max-new-tokens", "8", "--fewshot-k", "1", "--limit", "6"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "results.json").read_text())
    assert scores["requests"] == 6 and set(scores["systems"]) == {"search", "base-fewshot", "rec-run"}
    assert scores["systems"]["search"]["sku_exists"] == 1.0
    assert scores["max_new_tokens"] == 8 and "cut_at_limit" not in scores["systems"]["search"]  # search generates none
    assert scores["systems"]["rec-run"]["cut_at_limit"]["value"] == 1.0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all(set(p["rec-run"]["skus"]) <= set(p["candidates"]) for p in predictions)
    assert "| search |" in (out / "report.md").read_text()

    # --systems picks among the task's systems: the search alone loads no model; support systems are refused
    result = runner.invoke(app, ["evaluate", "--task", "recommend", "--adapter", str(run), "--output", str(out),
                                 "--systems", "search", "--limit", "6"])
    assert result.exit_code == 0, result.output
    assert set(json.loads((out / "results.json").read_text())["systems"]) == {"search"}
    for extra, message in ((["--systems", "search,grounded"], "compares search, base-fewshot, finetuned"),
                           (["--knowledge", "shop"], "without a knowledge base: drop --knowledge"),
                           (["--grammar", "products"], "--grammar products: choose candidates, catalog, none"),
                           (["--task", "copy", "--grammar", "none"], "no effect with --task copy")):
        result = runner.invoke(app, ["evaluate", "--task", "recommend", "--adapter", str(run), *extra])
        assert isinstance(result.exception, EcombotError) and message in str(result.exception), result.output

    # decoding under the grammar of the whole catalog (what it admits: the grammar test above): recorded, reported
    result = runner.invoke(app, ["evaluate", "--task", "recommend", "--adapter", str(run), "--output", str(out),
                                 "--systems", "finetuned", "--limit", "3", "--max-new-tokens", "12",
                                 "--grammar", "catalog"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "results.json").read_text())
    assert scores["grammar"] == "catalog"
    assert "any product of the catalog" in (out / "report.md").read_text()
    texts = [json.loads(line)["rec-run"]["text"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    starts = [p.sku + ": " for p in builtin[::8]] + [NONE_MATCH]  # the catalog's products, or "none matches"
    assert len(texts) == 3 and all(any(t.startswith(s) or s.startswith(t) for s in starts) for t in texts), texts


def test_catalog_spellings_users_have_read_the_same(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([{"SKU": "OAK-TABLE", "Title": "", "Name": "Oak table", "Category": "Tables",
                                 "Price": "$99", "Color": "natural"}]))
    product = read_catalog(path)[0]
    assert (product.sku, product.title, product.category, product.price) == ("OAK-TABLE", "Oak table", "tables", 99.0)
    assert product.attributes == {"colour": "natural"}  # one spelling for requests, candidates and reasons
    assert len(read_catalog("builtin")) == 320
    for header, field in (("sku,category,price\n", "title"), ("sku,title,category,price,attributes\n", "attributes")):
        (tmp_path / "c.csv").write_text(header + "A,B,c,1,x\n")
        with pytest.raises(DataError, match=rf"c.csv:row 1: field '{field}'"):
            read_catalog(tmp_path / "c.csv")


def test_any_sku_spelling_parses_and_words_inside_other_words_are_not_values(builtin):
    from ecombot.catalog.copy import categorical_values, copy_prompt
    from ecombot.catalog.recommend import parse_recommendations
    from ecombot.config import load_config
    from ecombot.errors import ConfigError
    from ecombot.evaluate.metrics import copy_checks

    odd = [Product("OAK-TABLE", "Oak table", "tables", 99.0), Product("AB/12", "Lamp", "lamps", 20.0)]
    assert parse_recommendations("AB/12: bright\nOAK-TABLE: sturdy", odd).skus == ["AB/12", "OAK-TABLE"]
    duvet = next(p for p in builtin if p.category == "duvet cover" and p.attribute("collection") != "Cove")
    alternatives = categorical_values(builtin)[duvet.category]
    assert "cove" in alternatives  # a collection; "duvet cover" must not count as naming it
    wrong = f"{duvet.description} From our Cove collection."
    assert copy_checks(wrong, duvet.price, duvet.attributes, copy_prompt(duvet), alternatives)["contradicted"] > 0
    table = Product("A", "Oak table", "side table", 129.0, {"material": "oak"})
    assert copy_checks("An oak table for $129.", 129.0, table.attributes, copy_prompt(table), set())["coverage"] == 1.0
    with pytest.raises(ConfigError, match="a support run answers questions about the catalog's products"):
        load_config(None, catalog="builtin", knowledge="none")
