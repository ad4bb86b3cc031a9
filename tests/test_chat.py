import io
import json

import pytest
from fake_knowledge import (COVERED, HANDOFF, NOT_COVERED, RETURN_PAIR, RETURNS, fake_grounder, grounded_run,  # noqa: F401
                            knowledge_bases)
from scripted_engine import ScriptedEngine

from ecombot.chat import (BASE, Decoding, TransformersEngine, PlaceholderStream, answer_streaming, fill_placeholders,
                          open_knowledge, parse_context, repl)
from ecombot.chat.terminal import FACTS_NOTE, HANDOFF_NOTE
from ecombot.errors import EcombotError, ModelError
from ecombot.knowledge import REUSE_THRESHOLD
from ecombot.models import load_for_inference
from ecombot.run_dir import RunDir


def test_placeholders_are_filled_or_made_readable():
    context = parse_context(["Order Number=HP-1", "customer_name = Ana "])
    assert context == {"ordernumber": "HP-1", "customername": "Ana"}
    text = "Hi {{Customer Name}}, order {{ Order Number }} ships; see {{Tracking URL}}."
    assert fill_placeholders(text, context) == ("Hi Ana, order HP-1 ships; see your tracking url."
                                                " Could you please share your tracking url so I can help you further?")
    unknown = fill_placeholders("Hi {{Customer Name}}, I checked order {{Order Number}} and {{Order Number}}.", {})
    assert unknown == ("Hi there, I checked order your order number and your order number."
                       " Could you please share your order number so I can help you further?")
    assert "{{" not in unknown and fill_placeholders("No placeholders here.", {}) == "No placeholders here."
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_context(["order"])


def test_streaming_fill_handles_placeholders_split_across_chunks():
    stream = PlaceholderStream({"ordernumber": "HP-1"})
    pieces = ["Your order {", "{Order Num", "ber}", "} ships. Use {braces} freely", "."]
    out = "".join(stream.feed(p) for p in pieces) + stream.flush()
    assert out == "Your order HP-1 ships. Use {braces} freely."


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    loaded = load_for_inference(model=str(tiny_model_dir), precision="fp32")
    return TransformersEngine(loaded, "Be brief.", Decoding(max_new_tokens=8))


def test_batched_generation_is_deterministic(engine):
    questions = [[{"role": "user", "content": "Where is my order?"}], [{"role": "user", "content": "Refund?"}]]
    first = [g.text for g in engine.generate(questions)]
    assert len(first) == 2 and all(isinstance(a, str) for a in first)
    assert [g.text for g in engine.generate(questions)] == first
    assert engine.generate(questions[:1])[0].text == first[0]  # left padding does not change the answer


def follows_recommend_grammar(text: str, skus: list[str], complete: bool) -> bool:
    """Whether `text` is an answer `answer_grammar(skus, ...)` allows (complete: whole; else a start of one)."""
    from ecombot.catalog.recommend import MAX_PICKS, NONE_MATCH

    if NONE_MATCH.startswith(text) if not complete else text == NONE_MATCH:
        return True
    lines = text.split("\n")
    whole = lines if complete else lines[:-1]
    last_ok = complete or any(s.startswith(lines[-1]) or (lines[-1].startswith(s + ": ")
                                                           and len(lines[-1]) > len(s) + 2) for s in skus)
    return (len(lines) <= MAX_PICKS and last_ok
            and all(line.split(": ", 1)[0] in skus and len(line.split(": ", 1)) == 2 and line.split(": ", 1)[1]
                    for line in whole))


def test_grammar_rows_answer_only_what_their_grammar_allows_beside_free_rows(engine):
    from ecombot.catalog.recommend import answer_grammar

    skus = ["HP-01002", "OAK/7"]
    questions = [[{"role": "user", "content": f"Recommend a table, option {i}"}] for i in range(3)]
    free = engine.generate(questions, max_new_tokens=[40] * 3)
    assert not any(follows_recommend_grammar(g.text, skus, True) for g in free)  # the random model's own answers
    grammar = answer_grammar(skus, 200)
    constrained = engine.generate(questions, max_new_tokens=[40, 40, 4], grammars=[grammar, None, grammar])
    # a free row beside constrained ones answers as it did alone
    assert (constrained[1].text, constrained[1].new_tokens) == (free[1].text, free[1].new_tokens)
    first, cut = constrained[0], constrained[2]
    assert follows_recommend_grammar(first.text, skus, first.finish_reason == "stop"), first
    # row 2 stopped at its own 4-token budget while row 0 went on (generate pads it): still a start of an answer
    assert cut.finish_reason == "length" and cut.new_tokens == 4 and follows_recommend_grammar(cut.text, skus, False)
    assert engine.generate(questions[:1], max_new_tokens=[40], grammars=[grammar])[0].text == first.text


def test_streamed_pieces_make_the_generated_text(engine):
    question, pieces = [{"role": "user", "content": "Can I pay with PayPal?"}], []
    [answer] = engine.generate([question], on_text=lambda row, piece: pieces.append(piece))
    assert len(pieces) > 1 and "".join(pieces) == answer.text == engine.generate([question])[0].text


def test_history_is_trimmed_to_the_context_window(engine):
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"question number {i} about my order"},
                    {"role": "assistant", "content": f"answer number {i} about shipping"}]
    history.append({"role": "user", "content": "last question"})
    engine.context_tokens = 120
    try:
        ids = engine.prompt_ids(history)
    finally:
        engine.context_tokens = 2048
    text = engine.tokenizer.decode(ids)
    assert len(ids) + engine.decoding.max_new_tokens <= 120
    assert "last question" in text and "Be brief." in text and "question number 0 " not in text


def test_terminal_chat_commands(engine):
    inputs = iter(["Where is my order?", "/reset", "   ", "Hello", "/quit", "never read"])
    out = io.StringIO()
    repl(engine, {}, read=lambda prompt: next(inputs), out=out)
    text = out.getvalue()
    assert text.count("bot> ") == 2 and "(new conversation)" in text
    assert next(inputs) == "never read"


def test_terminal_chat_shows_sources_and_hands_over_uncovered_questions():
    engine = ScriptedEngine("Yes, within 30 days.")
    inputs = iter([COVERED, NOT_COVERED, "/quit"])
    out = io.StringIO()
    repl(engine, {}, read=lambda prompt: next(inputs), out=out, grounder=fake_grounder())
    assert out.getvalue().splitlines()[1:] == [
        "bot> Yes, within 30 days.", "from: Returns and exchanges (policy.md)",
        f"bot> {HANDOFF}", HANDOFF_NOTE]
    [asked] = engine.seen  # the uncovered question never reached the model
    assert asked[0]["content"].startswith("Store knowledge:\n[1] Returns and exchanges (policy.md): Unworn shoes")
    assert asked[0]["content"].endswith(f"Customer question: {COVERED}")


def test_terminal_chat_gives_a_stored_answer_as_written_and_says_so():
    engine = ScriptedEngine("Generated from the passages.")
    grounder = fake_grounder((RETURNS, RETURN_PAIR), reuse=0.8)
    out = io.StringIO()
    answer = answer_streaming(engine, [{"role": "user", "content": COVERED}], {"ordernumber": "HP-7"}, out, grounder)
    assert answer == RETURN_PAIR.text and engine.seen == []  # the raw answer goes in the history
    assert out.getvalue().splitlines() == ["Yes: unworn shoes come back free within 30 days, order HP-7 included.",
                                           "from: returns (data: faq.json) (its stored answer, as written)"]
    follow_up = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
                 {"role": "user", "content": COVERED}]  # the same words as a later turn: the model answers
    assert answer_streaming(engine, follow_up, {}, io.StringIO(), grounder) == "Generated from the passages."
    assert len(engine.seen) == 1
    grounder.reuse = 1.5
    out = io.StringIO()
    assert answer_streaming(engine, [{"role": "user", "content": COVERED}], {}, out, grounder) == (
        "Generated from the passages.")
    assert out.getvalue().splitlines()[-1] == "from: returns (data: faq.json); Returns and exchanges (policy.md)"


def test_terminal_chat_flags_a_generated_handoff():
    out = io.StringIO()
    inputs = iter([COVERED, "/quit"])
    repl(ScriptedEngine(HANDOFF), {}, read=lambda prompt: next(inputs), out=out, grounder=fake_grounder())
    assert out.getvalue().splitlines()[-2:] == ["from: Returns and exchanges (policy.md)", HANDOFF_NOTE]


def test_terminal_chat_leaves_out_a_fact_no_passage_states_and_hands_over():
    engine = ScriptedEngine("Yes, within 30 days.\nRefunds take 5 days.")
    out = io.StringIO()
    answer = answer_streaming(engine, [{"role": "user", "content": COVERED}], {}, out, fake_grounder(check_facts=True))
    assert answer == f"Yes, within 30 days.\n{HANDOFF}"  # what the history keeps is what the customer saw
    assert out.getvalue().splitlines() == ["Yes, within 30 days.", HANDOFF, "from: Returns and exchanges (policy.md)",
                                           FACTS_NOTE + "5 day)", HANDOFF_NOTE]


def test_chat_and_serve_use_the_runs_knowledge_unless_told_otherwise(knowledge_bases, tmp_path):
    run = grounded_run(tmp_path)
    grounder, note = open_knowledge(run, None, None, None)
    assert (grounder.k, grounder.handoff, grounder.reuse, grounder.check_facts, note) == (
        4, HANDOFF, REUSE_THRESHOLD, True,
        "knowledge: 'shop', 4 passages per question, stored answers reused from cosine 0.90")
    grounder, note = open_knowledge(run, "other", "sqlite:///other.db", 2, reuse_answers=False, check_facts=False)
    assert grounder.reuse is None and not grounder.check_facts
    assert note.endswith(", every answer generated, facts unchecked")
    # its own training pairs; in another base none (they are other runs')
    assert knowledge_bases == [("shop", "sqlite:///shop.db", 4, HANDOFF, REUSE_THRESHOLD, ["data: shop.jsonl"]),
                               ("other", "sqlite:///other.db", 2, HANDOFF, None, [])]
    assert open_knowledge(run, "none", None, None) == (None, "knowledge: none, answers come from the model alone")
    assert len(knowledge_bases) == 2  # "none" opens nothing
    # `ecombot learn` promoted v2: the live version's record, with its feedback pairs
    record = json.loads((run / "run_config.json").read_text())
    record["knowledge"]["pairs"] = ["data: shop.jsonl", "data: v2-learn.jsonl"]
    (run / "versions" / "v2").mkdir(parents=True)
    (run / "versions" / "v2" / "run_config.json").write_text(json.dumps(record))
    (run / "versions.json").write_text(json.dumps({"live": "v2", "versions": []}))
    open_knowledge(run, None, None, None)
    assert knowledge_bases[-1][-1] == ["data: shop.jsonl", "data: v2-learn.jsonl"]
    # a server's support adapters share one grounder: every one's pairs, not only the first one's
    other = tmp_path / "other"
    other.mkdir()
    record["knowledge"]["pairs"] = ["data: faq.json"]
    (other / "run_config.json").write_text(json.dumps(record))
    open_knowledge([other, run], None, None, None)
    assert knowledge_bases[-1][-1] == ["data: faq.json", "data: shop.jsonl", "data: v2-learn.jsonl"]


def test_an_empty_default_base_means_no_grounding_but_a_named_one_is_an_error(knowledge_bases, tmp_path):
    grounder, note = open_knowledge(None, None, None, None)
    assert grounder is None and "the knowledge base 'default' is empty" in note
    assert knowledge_bases == [("default", None, 3, None, REUSE_THRESHOLD, None)]
    with pytest.raises(EcombotError, match="'empty' is empty"):
        open_knowledge(None, "empty", None, None)
    run = grounded_run(tmp_path)
    (run / "run_config.json").write_text(json.dumps({"knowledge": {"name": "default", "k": 2}}))
    with pytest.raises(EcombotError, match="'default' is empty"):  # the run was trained on it: serving without is wrong
        open_knowledge(run, None, None, None)


def test_an_empty_database_means_no_grounding_on_the_real_knowledge_base(tmp_path):
    grounder, note = open_knowledge(None, None, f"sqlite:///{tmp_path / 'fresh.db'}", None)
    assert grounder is None and note.startswith("knowledge: none, answers come from the model alone (the knowledge "
                                                "base 'default' is empty")
    with pytest.raises(EcombotError, match="'shop' is empty"):
        open_knowledge(None, "shop", f"sqlite:///{tmp_path / 'fresh.db'}", None)


def test_repetition_penalty_touches_only_answer_tokens():
    import torch

    from ecombot.chat.engine import AnswerRepetitionPenalty

    scores = torch.tensor([[2.0, -2.0, 2.0, 2.0, 1.0]])
    prompt_and_answer = torch.tensor([[0, 1, 3]])  # tokens 0 and 1 are the prompt, 3 was generated
    out = AnswerRepetitionPenalty(2.0, prompt_length=2)(prompt_and_answer, scores.clone())
    assert out.tolist() == [[2.0, -2.0, 2.0, 1.0, 1.0]]  # only token 3 is damped; prompt tokens 0 and 1 untouched
    negative = AnswerRepetitionPenalty(2.0, prompt_length=0)(torch.tensor([[1]]), scores.clone())
    assert negative[0, 1] == -4.0  # negative scores are pushed further down
    assert torch.equal(AnswerRepetitionPenalty(2.0, prompt_length=3)(prompt_and_answer, scores.clone()), scores)


@pytest.mark.parametrize("bits, group, tolerance", [(8, 64, 0.01), (4, 64, 0.08), (4, 32, 0.06)])
def test_low_bit_decoding_layer_matches_the_bf16_layer(bits, group, tolerance):
    import torch

    from ecombot.speedups.lowbit import LowBitDecodeLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64, bias=True).to(torch.bfloat16)
    layer = LowBitDecodeLinear(linear, bits, group)
    assert layer.bits == bits and layer.weight is linear.weight  # shared: tied weights stay tied
    one = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    many = torch.randn(3, 5, 128, dtype=torch.bfloat16)
    with torch.inference_mode():
        exact, low = linear(one).float(), layer(one).float()
        assert not torch.equal(exact, low)  # the low-bit kernel really answered the one-row call
        assert (low - exact).norm() / exact.norm() < tolerance
        assert torch.equal(layer(many), linear(many))  # batched calls keep the bf16 weights
    assert torch.equal(layer(one), linear(one))  # with gradients on (training), always the original weights


@pytest.mark.parametrize("most_rows", [1, 8])
def test_an_fp32_layer_answers_a_few_rows_with_low_bit_weights_and_prompts_in_fp32(most_rows):
    """fp32 models (CPUs without native bf16): a decoding step's rows (one per request in the batch, up to
    `most_rows`) go through the kernels in bf16 and come back fp32; prompts keep the fp32 weights."""
    import torch

    from ecombot.speedups.lowbit import LowBitDecodeLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64, bias=True)
    layer = LowBitDecodeLinear(linear, 8, most_rows=most_rows)
    one, step, prompts = torch.randn(1, 1, 128), torch.randn(most_rows, 1, 128), torch.randn(3, 5, 128)
    with torch.inference_mode():
        for rows in (one, step):
            exact, low = linear(rows), layer(rows)
            assert low.shape == exact.shape and low.dtype == torch.float32 and not torch.equal(exact, low)
            assert (low - exact).norm() / exact.norm() < 0.02
        assert torch.equal(layer(prompts), linear(prompts))  # 15 rows: more than most_rows
        wider = torch.randn(most_rows + 1, 1, 128)
        assert torch.equal(layer(wider), linear(wider))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_low_bit_decoding_keeps_lora_and_the_answers(tiny_model_dir, adapter_dirs, monkeypatch, precision):
    import torch

    from ecombot.speedups import lowbit
    from ecombot.speedups.lowbit import LowBitDecodeLinear
    from ecombot.chat import open_engine

    monkeypatch.setattr(lowbit, "fp32_pays", lambda: True)  # fp32 models get the kernels on AVX-512 CPUs only
    engine = open_engine(str(tiny_model_dir), [("support", adapter_dirs["support"])], Decoding(max_new_tokens=6),
                          precision=precision, decode_bits=16)
    questions = [[{"role": "user", "content": "Where is my order?"}], [{"role": "user", "content": "Refund?"}]]
    before = engine.generate(questions, "support")
    engine.speed_up_decoding(8)
    swapped = [m for m in engine.model.modules() if isinstance(m, LowBitDecodeLinear)]
    assert engine.low_bit_layers == len(swapped) == 2 * 7 + 1  # 2 layers x 7 projections + the output head
    head = engine.model.get_output_embeddings()
    assert head.bits == 4 and head.group == 32 and {m.bits for m in swapped if m is not head} == {8}
    # bf16: batched steps keep the bf16 weights; fp32: the two rows of each batched step use the kernels too
    assert {m.most_rows for m in swapped if m is not head} == ({1} if precision == "bf16" else {8})
    assert all(type(m.lora_A["support"]) is torch.nn.Linear for m in engine.model.modules() if hasattr(m, "lora_A"))
    rows_seen = []
    kernel = torch.ops.aten._weight_int8pack_mm
    monkeypatch.setattr(torch.ops.aten, "_weight_int8pack_mm",
                        lambda row, *args: rows_seen.append(row.shape[0]) or kernel(row, *args), raising=False)
    after = engine.generate(questions, "support")
    assert [a.new_tokens for a in after] == [b.new_tokens for b in before]
    assert (2 in rows_seen) == (precision == "fp32") and 1 not in rows_seen  # both rows answered as one batch
    with pytest.raises(Exception, match="before speed_up_decoding"):
        engine.add_adapter("fr", adapter_dirs["fr"])
    with pytest.raises(Exception, match="4, 8 or 16"):
        engine.speed_up_decoding(5)


def test_adapters_named_with_dots_load_and_answer_under_their_names(tiny_model_dir, adapter_dirs):
    """A run folder such as "run-v1.2" names its adapter; PEFT refuses "." in an adapter's name (evaluate failed:
    "module name can't contain '.'")."""
    import torch

    from ecombot.chat import open_engine

    named = [("support.v1.2", adapter_dirs["support"]), ("fr.v2", adapter_dirs["fr"])]
    engine = open_engine(str(tiny_model_dir), named, Decoding(max_new_tokens=4), precision="fp32")
    assert engine.adapters() == ["support.v1.2", "fr.v2"] and engine.default_adapter == "support.v1.2"
    ids = torch.tensor([engine.prompt_ids([{"role": "user", "content": "Where is my order?"}])])

    def logits(name=None):
        with torch.inference_mode(), engine.using(name):
            return engine.model(input_ids=ids).logits

    support, fr, base = logits("support.v1.2"), logits("fr.v2"), logits(BASE)
    assert not torch.equal(support, fr) and not torch.equal(fr, base)  # each name answers with its own weights
    assert torch.equal(logits(), support)
    with pytest.raises(ModelError, match="unknown adapter 'support'"):
        logits("support")


def test_each_adapter_is_told_the_system_prompt_it_was_trained_with(tiny_model_dir, adapter_dirs, tmp_path):
    import json
    import shutil

    from ecombot.chat.engine import BASE
    from ecombot.config import BUILTIN_SYSTEM_PROMPT
    from ecombot.models import encode_prompt, with_system
    from ecombot.chat import open_engine

    runs = {name: tmp_path / name for name in ("support", "fr", "foreign")}
    for name, prompt in (("support", None), ("fr", "Réponds en français."), ("foreign", "unused")):
        shutil.copytree(adapter_dirs["fr" if name == "fr" else "support"], runs[name])
        if name != "foreign":  # an adapter trained elsewhere has no run config: no prompt is assumed
            (runs[name] / "run_config.json").write_text(json.dumps({"system_prompt": prompt, "config": {}}))
    engine = open_engine(str(tiny_model_dir), list(runs.items()), Decoding(max_new_tokens=4), precision="fp32",
                          decode_bits=16)
    question = [{"role": "user", "content": "Where is my order?"}]
    expected = {"support": question, "fr": with_system(question, "Réponds en français."), "foreign": question,
                BASE: with_system(question, BUILTIN_SYSTEM_PROMPT)}
    for adapter, messages in expected.items():
        assert engine.prompt_ids(question, adapter) == encode_prompt(engine.tokenizer, messages), adapter
    engine.override_system_prompt("Be brief.")  # `ecombot chat --system-prompt`: the user's choice wins everywhere
    assert {engine.system_prompt(a) for a in expected} == {"Be brief."}


def test_answers_get_room_for_the_longest_answer_the_adapters_trained_on(tmp_path):
    from ecombot.chat import adapters_answer_limit
    from ecombot.models import ANSWER_TOKENS_CAP, answer_token_limit

    # a quarter over the longest answer, in steps of 32 tokens, between the command's own default and the cap
    assert answer_token_limit(None, 200) == answer_token_limit(0, 200) == 200
    assert answer_token_limit(79, 160) == 160  # the built-in store's answers: the default stays
    assert answer_token_limit(179, 160) == 224 and answer_token_limit(180, 160) == 256  # 223.75 -> 224, 225 -> 256
    assert answer_token_limit(205, 160) == 288  # 256.25: rounded up, never under a quarter over
    assert answer_token_limit(5000, 200) == ANSWER_TOKENS_CAP == 512  # 1,536 of the 2,048 context left to the prompt

    def run_with_answers(path, longest):
        path.mkdir(parents=True)
        (path / "data_summary.json").write_text(json.dumps({"answer_tokens": {"p50": 40, "max": longest}}))
        return path

    faq, steps = run_with_answers(tmp_path / "faq", 90), run_with_answers(tmp_path / "steps", 300)
    old = tmp_path / "old"  # recorded before answer lengths were kept, or a PEFT adapter from elsewhere
    old.mkdir()
    assert adapters_answer_limit([]) == adapters_answer_limit([old]) == adapters_answer_limit([faq]) == 200
    assert adapters_answer_limit([faq, steps, old]) == 384  # a server: the longest of its adapters'
    # `ecombot learn` promoted v2, trained on feedback with longer answers: the live version counts too
    run_with_answers(steps / "versions" / "v2", 380)
    (steps / "versions.json").write_text(json.dumps({"live": "v2", "versions": []}))
    assert adapters_answer_limit([steps]) == 480 and RunDir(steps).longest_answer() == 300  # the run's own
    (steps / "data_summary.json").write_text("{not json")
    with pytest.raises(EcombotError, match="data_summary.json: damaged, not JSON"):
        adapters_answer_limit([steps])
