"""Grounded (retrieval-augmented) training: what the prompts carry, what the knowledge base gains, what the run
records."""

import dataclasses
import json
import re

import pytest

from ecombot.data import Conversation, builtin_path, normalise_text, read_file
from ecombot.errors import EcombotError
from ecombot.data.builtin import policy_path
from ecombot.knowledge import DEFAULT_HANDOFF, Grounder, Hit, KnowledgeBase, Passage, Retriever, qa_passages
from ecombot.knowledge.grounding import KNOWLEDGE_HEADER, QUESTION_HEADER
from ecombot.knowledge.chunking import read_passages
from ecombot.train.grounding import NUMBER, ground_split, own_answer_filter


def builtin_sample(n_per_intent: int = 4) -> list[Conversation]:
    convs, seen = [], {}
    for conv in read_file(builtin_path()).conversations:
        if len(conv.messages) == 2 and seen.get(conv.intent, 0) < n_per_intent:
            seen[conv.intent] = seen.get(conv.intent, 0) + 1
            convs.append(conv)
    return convs


def test_training_prompts_never_carry_their_own_answer_and_a_share_learns_the_handoff():
    convs = builtin_sample()
    passages = read_passages(policy_path()) + qa_passages(convs, "data: sample")
    grounder = Grounder(Retriever(passages), k=3)
    grounded = ground_split(convs, grounder, handoff_share=0.25, seed=1)

    assert len(grounded) == len(convs)
    handoffs = [g for g in grounded if g.answer == DEFAULT_HANDOFF]
    assert 0.15 * len(convs) < len(handoffs) < 0.35 * len(convs)
    for original, conv in zip(convs, grounded):
        prompt = conv.messages[-2]["content"]
        assert prompt.startswith(KNOWLEDGE_HEADER) and prompt.endswith(f"{QUESTION_HEADER} {original.question}")
        assert conv.messages[:-2] == original.messages[:-2]
        # the example's own answer is never among its passages (neither on a handoff example)
        assert normalise_text(original.answer) not in normalise_text(prompt)
        if conv.answer != DEFAULT_HANDOFF:  # the answer, or the same answer with its numbers edited
            assert NUMBER.sub("#", conv.answer) == NUMBER.sub("#", original.answer)
            assert (conv.answer != original.answer) == bool(conv.meta.get("facts_edited"))
    # half of the answered prompts show documents only (the model learns to answer from the store's own text)
    answered = [c for c in grounded if c.answer != DEFAULT_HANDOFF]
    documents_only = [c for c in answered if "(data: sample)" not in c.messages[-2]["content"]]
    assert 0.35 * len(answered) < len(documents_only) < 0.65 * len(answered)
    assert all("(policy.md)" in c.messages[-2]["content"] for c in documents_only)
    assert 0 < sum(bool(c.meta.get("facts_edited")) for c in answered) < 0.45 * len(answered)


def test_a_share_of_training_prompts_carries_no_passages_and_keeps_its_own_answer():
    """What `--knowledge none` asks the adapter; without such examples it hands over or rambles without passages.
    Nothing is retrieved for them, and a handoff example borrows only a grounded conversation's passages."""
    convs = builtin_sample()
    grounder = Grounder(Retriever(read_passages(policy_path()) + qa_passages(convs, "data: sample")), k=3)
    asked = []
    ground_many = grounder.ground_many
    grounder.ground_many = lambda questions, filters: asked.append(len(questions)) or ground_many(questions, filters)
    grounded = ground_split(convs, grounder, handoff_share=0.5, seed=1, ungrounded_share=0.3)
    plain = [(o, g) for o, g in zip(convs, grounded) if not g.meta["grounded"]]
    assert 0.2 * len(convs) < len(plain) < 0.4 * len(convs)
    assert asked == [len(convs) - len(plain)]
    assert all(g.messages == o.messages for o, g in plain)
    assert all(KNOWLEDGE_HEADER in g.messages[-2]["content"] for g in grounded if g.meta["grounded"])
    handoffs = [g for g in grounded if g.answer == DEFAULT_HANDOFF]
    assert 0.35 * (len(convs) - len(plain)) < len(handoffs) < 0.65 * (len(convs) - len(plain))
    assert all(g.meta["grounded"] for g in ground_split(convs, grounder, handoff_share=0.1, seed=1))


@pytest.mark.parametrize("text, numbers", [
    ("Standard is $4.95, free over $50, in 3–5 business days or 1-2 with Express.", ["4.95", "50", "3", "5", "1", "2"]),
    ("Order HP-20931, support@hp2.com, 24/7, 1,000 points, 10% off at 14:00.", ["10", "14", "00"]),
])
def test_numbers_a_fact_edit_may_change(text, numbers):
    assert NUMBER.findall(text) == numbers


def test_fact_edits_change_the_answer_and_its_passages_together():
    policy = Passage("policy.md", "Returns", 1, "Returns are accepted within 30 days of delivery; a label costs $4.95.")
    other = Passage("policy.md", "Refunds", 5, "Refunds reach your card in 5 to 10 business days.")
    conv = Conversation([{"role": "user", "content": "Can I return it after 2 weeks? It cost 30 dollars."},
                         {"role": "assistant", "content": "Yes, you have 30 days; the label is $4.95 and takes 2 days."}])
    [edited] = ground_split([conv], Grounder(Retriever([policy, other]), k=2), 0.0, seed=3, fact_edit_share=1.0)
    prompt, answer = edited.messages[-2]["content"], edited.answer
    factor = 2 if "60 days" in answer else 3
    assert answer == f"Yes, you have {30 * factor} days; the label is ${4.95 * factor:.2f} and takes 2 days."
    assert f"within {30 * factor} days" in prompt and f"${4.95 * factor:.2f}" in prompt and "$4.95" not in prompt
    assert "5 to 10 business days" in prompt  # numbers the answer does not state stay
    assert prompt.endswith("Customer question: Can I return it after 2 weeks? It cost 30 dollars.")
    assert edited.meta["facts_edited"]
    no_shared = Conversation([conv.messages[0], {"role": "assistant", "content": "An agent will call you at 9."}])
    [plain] = ground_split([no_shared], Grounder(Retriever([policy, other]), k=2), 0.0, seed=3, fact_edit_share=1.0)
    assert plain.answer == no_shared.answer and "facts_edited" not in plain.meta


def test_rule_examples_hide_their_topic_and_answer_with_the_document_line_that_states_it():
    convs = builtin_sample()
    grounder = Grounder(Retriever(read_passages(policy_path()) + qa_passages(convs, "data: sample")), k=3)
    grounded = ground_split(convs, grounder, handoff_share=0.0, seed=1, fact_edit_share=0.0, rule_share=0.99)

    ruled = [(original, g) for original, g in zip(convs, grounded) if g.meta.get("rule")]
    assert 0.4 * len(convs) < len(ruled) < len(convs)  # the others: no document line shown states their answer
    for original, conv in ruled:
        prompt, target = conv.messages[-2]["content"], conv.answer
        assert f"] {original.intent} (data: sample):" not in prompt  # no pair of its own topic
        shown = [re.sub(r"^\[\d+\] .*?\): ", "", line).removeprefix("- ") for line in prompt.splitlines()]
        # one or two of the document's lines, as it states them
        assert target in shown or any(target == f"{a} {b}" for a in shown for b in shown if a and b and a != b)
        assert target != original.answer
    installments = [conv.answer for original, conv in ruled if original.intent == "installments"]
    assert installments and all(a.startswith("Klarna splits orders over $35 into 4 interest-free payments.")
                                for a in installments)
    # every other example is what the same seed gives without rule examples (the same draws, the same search)
    without = ground_split(convs, grounder, handoff_share=0.0, seed=1, fact_edit_share=0.0)
    assert not any(g.meta.get("rule") for g in without)
    assert all(g.messages == w.messages for g, w in zip(grounded, without) if not g.meta.get("rule"))
    assert sum(g.messages != w.messages for g, w in zip(grounded, without)) == len(ruled)


def test_a_rule_is_the_closest_lines_that_reach_the_threshold():
    import numpy as np

    from ecombot.train.grounding import RULE_COSINE, rule_target

    document = Passage("policy.md", "Returns", 1, "- A\n- B\n- C")
    pair = Passage("data: faq.json", "", 1, "D", question="Q?")
    hits = [Hit(document, 0.6), Hit(pair, 0.9)]
    unit = lambda *xs: np.array(xs) / np.linalg.norm(xs)
    vectors = {"- A": unit(1, 0, 0), "- B": unit(0.8, 0.6, 0), "- C": unit(0, 0, 1)}
    assert rule_target(unit(1, 0.1, 0), hits, vectors) == "A B"  # cosines 0.99, 0.86: the closest first
    assert rule_target(unit(0.6, 1, 0), hits, vectors) == "B A"  # 0.93, 0.51
    assert rule_target(unit(0.3, 1, 0), hits, vectors) == "B"  # 0.81; A's 0.29 is below the threshold
    assert rule_target(unit(0.5, 0.5, 1), hits, vectors) == "C B"  # 0.82, 0.57, 0.41: at most two lines
    assert rule_target(unit(-1, 0, 0.2), hits, vectors) is None  # no line close enough
    assert RULE_COSINE == 0.5
    assert rule_target(unit(1, 0, 0), [Hit(pair, 0.9)], vectors) is None  # a Q&A pair is not a rule


def test_a_rule_example_without_intents_hides_its_own_pair_and_its_numbers_can_be_edited():
    policy = Passage("policy.md", "Gift cards", 1, "- Gift cards are valid for 2 years.\n- Gift cards can be "
                     "topped up online.\n- Gift cards from €25 to €250 are sent by e-mail.")
    conv = Conversation([{"role": "user", "content": "What amounts do your gift cards come in?"},
                         {"role": "assistant", "content": "Our gift cards go from €25 to €250, sent by e-mail."}])
    other = Conversation([{"role": "user", "content": "How long is a gift card valid?"},
                          {"role": "assistant", "content": "Two years from the day you buy it."}])
    grounder = Grounder(Retriever([policy] + qa_passages([conv, other], "data: faq.json")), k=3)
    [ruled, _] = ground_split([conv, other], grounder, 0.0, seed=0, fact_edit_share=0.0, rule_share=0.99)
    assert ruled.meta["rule"] and ruled.answer.startswith("Gift cards from €25 to €250 are sent by e-mail.")
    prompt = ruled.messages[-2]["content"]
    assert conv.answer not in prompt and "How long is a gift card valid?" in prompt
    [edited, _] = ground_split([conv, other], grounder, 0.0, seed=0, fact_edit_share=0.99, rule_share=0.99)
    assert edited.meta["rule"] and edited.meta["facts_edited"]
    factor = 2 if "€50" in edited.answer else 3
    assert edited.answer.startswith(f"Gift cards from €{25 * factor} to €{250 * factor} are sent by e-mail.")
    assert f"€{25 * factor} to €{250 * factor}" in edited.messages[-2]["content"]
    follow_up = Conversation([*other.messages, conv.messages[0], conv.messages[1]])
    [not_drawn] = ground_split([follow_up], grounder, 0.0, seed=0, fact_edit_share=0.0, rule_share=0.99)
    assert "rule" not in not_drawn.meta and not_drawn.answer == conv.answer  # a follow-up keeps its agent's answer


def test_own_answer_filter_rejects_paraphrases_with_the_same_answer_and_the_same_question():
    conv = Conversation([{"role": "user", "content": "Where is my order?"},
                         {"role": "assistant", "content": "Track it on the Orders page."}])
    rejects = own_answer_filter(conv)
    from ecombot.knowledge import Passage

    assert rejects(Passage("d", "", 1, "Track it on the orders page", question="Where's my parcel"))
    assert rejects(Passage("d", "", 1, "Other words.", question="where is my order"))
    assert not rejects(Passage("policy.md", "Order tracking", 3, "A tracking link is e-mailed as soon as it ships."))


def test_grounded_run_indexes_only_its_training_pairs_and_records_the_knowledge(tiny_model_dir, small_dataset,
                                                                                  tmp_path):
    from test_train import tiny_config
    from ecombot.train import train

    db = f"sqlite:///{tmp_path / 'kb.db'}"
    KnowledgeBase(db, "shop").add_files([policy_path()])
    run = tmp_path / "run"
    result = train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2, knowledge="shop", db=db,
                               knowledge_k=2), show_progress=False)

    base = KnowledgeBase(db, "shop")
    sources = {s.name: s.passages for s in base.sources()}
    assert sources["data: small.jsonl"] == result.split["train"]
    indexed = {normalise_text(p.question) for p in base.passages() if p.question}
    held_out = [json.loads(line) for name in ("validation", "test")
                for line in (run / "data" / f"{name}.jsonl").read_text().splitlines()]
    assert held_out and not any(normalise_text(row["messages"][0]["content"]) in indexed for row in held_out)

    record = json.loads((run / "run_config.json").read_text())["knowledge"]
    assert (record["name"], record["k"], record["handoff"]) == ("shop", 2, DEFAULT_HANDOFF)
    assert record["content_hash"] == base.content_hash() and record["passages"] == sum(sources.values())
    assert "knowledge base `shop`" in (run / "README.md").read_text()
    assert KnowledgeBase(db, "default").is_empty  # other bases untouched


def test_a_run_reads_its_own_training_pairs_never_another_runs(tmp_path):
    """Two stores' bots trained into one 'default' base: each bot's training prompts, chat and evaluation read the
    documents and its own pairs only, a learn version its lineage's, and a run recorded before scopes every pair."""
    from typer.testing import CliRunner

    from ecombot.chat import open_knowledge as chat_knowledge
    from ecombot.cli import app
    from ecombot.config import EvalConfig
    from ecombot.evaluate.grounded import open_knowledge as eval_knowledge
    from ecombot.train.grounding import ground_training_data

    db = f"sqlite:///{tmp_path / 'kb.db'}"
    policy = KnowledgeBase(db, "default").add_files([policy_path()])[0].passages
    sample = builtin_sample(4)
    first, second = sample[0::2], sample[1::2]  # the same intents asked in other words: each finds the other's pairs
    a = ground_training_data(first, [], "a.jsonl", "default", db, 3, 0.0, None, 0, inherited=[])
    b = ground_training_data(second, [], "b.jsonl", "default", db, 3, 0.0, None, 0, inherited=[])
    assert a.record["pairs"] == ["data: a.jsonl"] and b.record["pairs"] == ["data: b.jsonl"]
    assert b.record["passages"] == policy + len(second) and b.record["sources"] == ["data: b.jsonl", "policy.md"]
    prompts = " ".join(c.messages[-2]["content"] for c in b.train)
    assert "(data: b.jsonl)" in prompts and "(data: a.jsonl)" not in prompts
    assert f"left out: {len(first)} Q&A pairs other training runs added (data: a.jsonl)" in b.summary

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    for run, grounded in ((run_a, a), (run_b, b)):
        run.mkdir()
        (run / "run_config.json").write_text(json.dumps({"knowledge": grounded.record}))
    grounder, _ = chat_knowledge(run_b, None, None, None)
    assert {p.source for p in grounder.retriever.passages} == {"policy.md", "data: b.jsonl"}
    asked = second[0].question  # one of b's own pairs: its stored answer is given as written
    found = CliRunner().invoke(app, ["knowledge", "search", asked, "--adapter", str(run_b)])
    assert found.exit_code == 0, found.output
    assert "data: b.jsonl" in found.output and "data: a.jsonl" not in found.output
    assert "the stored answer of" in found.output and "question cosine 1.00 >= 0.90" in found.output
    knowledge = eval_knowledge(EvalConfig(adapters=[str(run_a)]), [], False, grounded=True)
    assert {p.source for p in knowledge.passages} == {"policy.md", "data: a.jsonl"}
    assert knowledge.info["changed_since_training"] is False  # b's pairs, added since, are not a's knowledge

    # a learn version of a: its feedback joins a's lineage; b's pairs are not "held" for it (they are not read)
    v2 = ground_training_data(first[:2] + second[:2], [], "a-v2-learn.jsonl", "default", db, 3, 0.0, None, 0,
                              inherited=a.record["pairs"])
    assert v2.record["pairs"] == ["data: a.jsonl", "data: a-v2-learn.jsonl"]
    assert {s.name: s.passages for s in KnowledgeBase(db, "default").sources()}["data: a-v2-learn.jsonl"] == 2

    old = {key: value for key, value in a.record.items() if key != "pairs"}  # recorded before scopes existed
    (run_a / "run_config.json").write_text(json.dumps({"knowledge": old}))
    grounder, _ = chat_knowledge(run_a, None, None, None)
    assert {p.source for p in grounder.retriever.passages} == {"policy.md", "data: a.jsonl", "data: b.jsonl",
                                                               "data: a-v2-learn.jsonl"}

    # a scope with nothing left in it (its pairs removed, no document) is said, not a traceback
    (run_a / "run_config.json").write_text(json.dumps({"knowledge": a.record}))
    for source in ("policy.md", "data: a.jsonl", "data: a-v2-learn.jsonl"):
        KnowledgeBase(db, "default").remove(source)
    with pytest.raises(EcombotError, match="holds no passage this adapter reads .its training pairs .data: a.jsonl"):
        chat_knowledge(run_a, None, None, None)


def test_product_questions_state_the_products_value_once_per_product_sized_and_seeded():
    from ecombot.catalog import read_catalog
    from ecombot.catalog.questions import KINDS, PRODUCT_QUESTIONS, product_questions

    products = read_catalog("builtin")
    made = product_questions(products, 40, seed=3)
    assert len(made) == 40 and made == product_questions(products, 40, seed=3)
    by_sku = {p.sku: p for p in products}
    kinds = set()
    for conv in made:
        kind = conv.intent.removeprefix("product_")
        asks, _, value = KINDS[kind]
        product = by_sku[conv.source.removeprefix("catalog: ")]
        assert conv.category == PRODUCT_QUESTIONS and value(product) in conv.answer and product.title in conv.answer
        assert conv.question in {a.format(title=t) for a in asks for t in (product.title, product.title.lower())}
        kinds.add(kind)
    assert kinds == set(KINDS)  # every kind asked
    lower = sum(by_sku[c.source.removeprefix("catalog: ")].title not in c.question for c in made)
    assert 10 <= lower <= 30  # about half typed in lower case, as customers do
    assert len({c.question for c in made}) == 40  # a product once
    twin = dataclasses.replace(products[0], sku="TWIN-1")  # two products with one title: neither is asked about
    assert not any(products[0].title in c.question for c in product_questions([products[0], twin], 5, seed=0))


def test_a_support_run_with_a_catalog_trains_product_questions_grounded_in_their_passages(
        tiny_model_dir, small_dataset, tmp_path, write_catalog, capsys):
    """`--catalog` on a support run: product questions split with the data (held-out ones ask about products never
    trained on), the catalog's passages join the knowledge base as a document, the questions' pairs do not (another
    product's pair would be found for a question about this one), and the run's search finds the product's passage
    for its questions; without a knowledge base it is refused."""
    from test_train import tiny_config
    from ecombot.catalog import read_catalog
    from ecombot.catalog.questions import PRODUCT_QUESTIONS
    from ecombot.errors import ConfigError
    from ecombot.train import train

    products = read_catalog("builtin")[:40]
    catalog = write_catalog(tmp_path / "products.jsonl", products)
    db = f"sqlite:///{tmp_path / 'kb.db'}"
    run = tmp_path / "run"
    train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=2, eval_steps=2, knowledge="shop", db=db,
                      catalog=str(catalog)))
    data = small_dataset.read_text().count("\n")
    asked = {name: [c for c in read_file(run / "data" / f"{name}.jsonl").conversations
                    if c.category == PRODUCT_QUESTIONS] for name in ("train", "validation", "test")}
    made = sum(map(len, asked.values()))
    assert made == min(40, int(0.25 * data)) and asked["train"] and asked["test"]
    assert f"{made} questions about products of {catalog}" in capsys.readouterr().out
    base = KnowledgeBase(db, "shop")
    assert {s.name: s.passages for s in base.sources()}["catalog: products.jsonl"] == 40
    pairs = {normalise_text(p.question) for p in base.passages() if p.question}
    assert pairs and not any(normalise_text(c.question) in pairs for c in asked["train"])
    assert "catalog: products.jsonl" in json.loads((run / "run_config.json").read_text())["knowledge"]["sources"]
    questions = [c for split in asked.values() for c in split]
    found = base.retriever().search([c.question for c in questions], 3)
    titles = [max((p.title for p in products if p.title in c.answer), key=len) for c in questions]
    assert sum(any(h.passage.text.startswith(t + " (SKU") for h in hits) for t, hits in zip(titles, found)) \
        >= 0.8 * len(questions)
    with pytest.raises(ConfigError, match="'catalog': a support run answers questions about the catalog"):
        tiny_config(tiny_model_dir, small_dataset, tmp_path / "x", knowledge="none", catalog=str(catalog))


def test_product_questions_are_never_trained_without_passages():
    """However large the ungrounded share, a product question keeps its passages (without them it could only invent
    the value); the store's own conversations are left ungrounded at the share, drawn as before."""
    from ecombot.catalog import read_catalog
    from ecombot.catalog.knowledge import catalog_passages
    from ecombot.catalog.questions import PRODUCT_QUESTIONS, product_questions

    support = builtin_sample(2)
    products = product_questions(read_catalog("builtin"), 12, seed=0)
    grounder = Grounder(Retriever(read_passages(policy_path()) + catalog_passages("builtin")[1]), k=2)
    grounded = ground_split(support + products, grounder, handoff_share=0.0, seed=0, ungrounded_share=0.95)
    plain = {c.question for c in grounded if not c.meta["grounded"]}
    assert all(c.meta["grounded"] for c in grounded if c.category == PRODUCT_QUESTIONS)
    assert len(plain) >= 0.8 * len(support)
    alone = ground_split(support, grounder, handoff_share=0.0, seed=0, ungrounded_share=0.95)
    assert plain == {c.question for c in alone if not c.meta["grounded"]}


def test_the_model_card_names_the_rule_share_only_where_a_run_used_it():
    from ecombot.train.card import grounding_line

    knowledge = {"name": "shop", "passages": 3, "sources": ["policy.md"], "content_hash": "h", "k": 3,
                 "ungrounded_share": 0.1, "handoff_share": 0.1, "handoff": "An agent will reply."}
    assert "document rule" not in grounding_line(knowledge)
    assert ("shown none (to answer with knowledge off), 17 answered with the document rule stating their answer "
            "(rule_share 0.3), 10% taught the handoff answer") in grounding_line(
        {**knowledge, "rule_share": 0.3, "rule_examples": 17})
