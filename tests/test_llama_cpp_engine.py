"""The llama.cpp engine against the PyTorch engine on a tiny Gemma 3 converted by llama.cpp's own converter: the same
greedy answers and losses, batching, budgets, cancellation, streaming, several adapters, promoted versions, serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_adapters

from ecombot.chat import BASE, Decoding, TransformersEngine, open_engine
from ecombot.chat.llama_cpp_engine import LlamaCppEngine
from ecombot.errors import ConfigError, EcombotError, ModelError
from ecombot.models import encode_conversations, llama_cpp, load_for_inference, load_tokenizer

QUESTIONS = [[{"role": "user", "content": q}] for q in
             ("Where is my order?", "Can I return a sofa I bought last week?", "Do you ship to Canada?")]
DECODING = Decoding(max_new_tokens=12, repetition_penalty=3.0)
PROMPT = "You answer for Harbor & Pine."


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with what llama.cpp's Gemma 3 assumes: attention scaled by the head size and no global layer
    among the first five (llama.cpp places them by its fixed pattern, Transformers by `layer_types`)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    for item in tiny_model_dir.iterdir():
        shutil.copy(item, path / item.name)
    config = json.loads((path / "config.json").read_text())
    config.update(query_pre_attn_scalar=config["head_dim"], layer_types=["sliding_attention"] * 2)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def gguf(model_dir, tmp_path_factory) -> Path:
    """The tiny model as an f32 GGUF by llama.cpp's converter. Its BPE tokenizer is not one the converter knows,
    so the converter is told it is a default one (llama.cpp's tokenizer is not used: the engine feeds token ids)."""
    out = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    tools = llama_cpp.converter_dir()
    script = ("import sys, conversion.base as b\n"
              "b.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'default'\n"
              "import convert_hf_to_gguf as c\n"
              f"sys.argv = ['convert', {str(model_dir)!r}, '--outfile', {str(out)!r}, '--outtype', 'f32']\n"
              "c.main()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tools / "gguf-py"), str(tools)])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters with random non-zero weights, as finished runs with their system prompts."""
    dirs = random_adapters(model_dir, tmp_path_factory)
    for name in dirs:
        prompt = PROMPT if name == "support" else "Réponds en français."
        (dirs[name] / "run_config.json").write_text(json.dumps(
            {"status": "complete", "system_prompt": prompt, "config": {"model": str(model_dir), "method": "lora"}}))
    return dirs


@pytest.fixture(scope="module")
def engines(model_dir, gguf, runs, tmp_path_factory):
    """The same two adapters in both engines (adapters converted into a home of this module's own)."""
    tools = llama_cpp.converter_dir()
    mp = pytest.MonkeyPatch()
    mp.setenv("ECOMBOT_HOME", str(tmp_path_factory.mktemp("home")))
    mp.setenv("ECOMBOT_LLAMA_CPP", str(tools))
    llama = LlamaCppEngine(model_dir, load_tokenizer(model_dir), gguf, PROMPT, DECODING, max_batch=4)
    torch_engine = TransformersEngine(load_for_inference(str(model_dir), runs["support"], precision="fp32",
                                                         adapter_name="support"), PROMPT, DECODING)
    for name, path in runs.items():
        llama.add_adapter(name, path)
        if name != "support":
            torch_engine.add_adapter(name, path)
    yield llama, torch_engine
    llama.close()
    mp.undo()


def test_greedy_answers_and_losses_equal_the_pytorch_engine_for_every_adapter(engines, runs):
    llama, torch_engine = engines
    assert llama.adapters() == ["support", "fr"] and llama.default_adapter == "support"
    texts = {}
    for adapter in ("support", "fr", BASE):
        ours, theirs = llama.generate(QUESTIONS, adapter), torch_engine.generate(QUESTIONS, adapter)
        assert [g.text for g in ours] == [g.text for g in theirs], adapter
        assert [g.new_tokens for g in ours] == [g.new_tokens for g in theirs]
        assert [g.prompt_tokens for g in ours] == [len(torch_engine.prompt_ids(q, adapter)) for q in QUESTIONS]
        texts[adapter] = [g.text for g in ours]
        assert {g.version for g in ours} == {None if adapter == BASE else "v1"}
    assert texts["support"] != texts["fr"] != texts[BASE]  # each adapter changes the answers
    # constrained decoding (a recommendation's grammar on two rows, the third free): the same greedy answers
    from ecombot.catalog.recommend import answer_grammar

    grammars = [answer_grammar(["HP-01002", "OAK/7"], 200), None, answer_grammar(["AB-1"], 200)]
    ours, theirs = (e.generate(QUESTIONS, "support", max_new_tokens=[30] * 3, grammars=grammars)
                    for e in (llama, torch_engine))
    assert [g.text for g in ours] == [g.text for g in theirs]
    free = llama.generate(QUESTIONS, "support", max_new_tokens=[30] * 3)
    assert ours[1].text == free[1].text and ours[2].text.startswith(("AB-1: ", "None of")) != free[2].text.startswith(
        ("AB-1: ", "None of"))
    assert llama.system_prompt("fr") == "Réponds en français." and llama.system_prompt(BASE) == PROMPT

    from ecombot.data import Conversation
    from ecombot.evaluate.heldout import engine_item_losses

    convs = [Conversation(q + [{"role": "assistant", "content": "Your order ships in 3 days."}]) for q in QUESTIONS]
    for adapter in ("support", BASE):
        ours, counts = engine_item_losses(llama, convs, adapter)
        theirs, their_counts = engine_item_losses(torch_engine, convs, adapter)
        np.testing.assert_array_equal(counts, their_counts)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    with pytest.raises(ModelError, match="unknown adapter 'nope'"):
        llama.generate(QUESTIONS, "nope")


def test_batches_budgets_cancellation_and_streaming(engines):
    llama, _ = engines
    alone = [llama.generate([q])[0] for q in QUESTIONS]
    together = llama.generate(QUESTIONS * 3)  # 9 rows: 3 batches of max_batch 4
    assert [g.text for g in together] == [g.text for g in alone] * 3

    streamed: dict[int, str] = {}

    def on_text(row: int, text: str):
        streamed[row] = streamed.get(row, "") + text
        return not (row == 1 and len(streamed[row]) > 0)  # the client of row 1 goes away after its first text

    cut = llama.generate(QUESTIONS, max_new_tokens=[12, 12, 3], on_text=on_text)
    assert [g.finish_reason for g in cut] == ["length", "cancelled", "length"]
    assert cut[0].text == alone[0].text and streamed[0] == cut[0].text
    assert cut[2].new_tokens == 3 and alone[2].text.startswith(cut[2].text)
    assert cut[1].new_tokens < 12


def test_a_promoted_version_is_swapped_in(engines, runs, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    llama, _ = engines
    run = tmp_path / "run"
    shutil.copytree(runs["fr"], run)
    llama.add_adapter("live", run)
    before = llama.generate(QUESTIONS, "live")
    assert llama.reload_promoted() == {} and {g.version for g in before} == {"v1"}
    v2 = run / "versions" / "v2"
    shutil.copytree(runs["fr"], v2)
    weights = load_file(str(v2 / "adapter_model.safetensors"))
    save_file({k: v + torch.randn_like(v) for k, v in weights.items()}, str(v2 / "adapter_model.safetensors"))
    (run / "versions.json").write_text(json.dumps({"live": "v2", "versions": [
        {"name": "v1", "parent": None, "status": "retired"}, {"name": "v2", "parent": "v1", "status": "live"}]}))
    assert llama.reload_promoted() == {"live": "v2"}
    after = llama.generate(QUESTIONS, "live")
    assert {g.version for g in after} == {"v2"} and [g.text for g in after] != [g.text for g in before]


def test_refuses_adapters_llama_cpp_cannot_apply(engines, runs, tmp_path):
    llama, _ = engines
    qlora = tmp_path / "qlora"
    shutil.copytree(runs["support"], qlora)
    info = json.loads((qlora / "run_config.json").read_text())
    info["config"]["method"] = "qlora"
    (qlora / "run_config.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="qlora adapter; llama.cpp applies plain LoRA only"):
        llama.add_adapter("q", qlora)


def test_factory_names_the_engine_and_the_extra(monkeypatch):
    with pytest.raises(ConfigError, match="choose one of transformers, llama.cpp"):
        open_engine("some-model", [], engine="vllm")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setattr("ecombot.models.resolve_model", lambda spec: Path(spec))
    with pytest.raises(EcombotError, match=r"pip install 'ecombot\[llama-cpp\]'"):
        open_engine("some-model", [], engine="llama.cpp")


def test_serving_batches_requests_on_the_llama_cpp_engine(engines, running_server, tmp_path):
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    from ecombot.config.serve import ServeConfig
    from ecombot.serve import Store, create_app

    llama, _ = engines
    expected = [g.text for g in llama.generate(QUESTIONS, "support")]
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    app = create_app(llama, store, ServeConfig(model_name="tiny", rate_limit_per_minute=0, max_batch=4))
    calls = []
    original = llama.generate
    lock = threading.Lock()

    def counting(conversations, *args, **kwargs):
        with lock:
            calls.append(len(conversations))
        return original(conversations, *args, **kwargs)

    llama.generate = counting
    try:
        with running_server(app) as server:
            def ask(question):
                body = {"model": "support", "messages": question, "max_tokens": 12}
                return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()

            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(ask, QUESTIONS * 2))
    finally:
        del llama.generate
    assert [a["choices"][0]["message"]["content"] for a in answers] == expected * 2
    assert sum(calls) == 6 and max(calls) > 1  # batched


def test_encoded_examples_match_what_evaluate_scores(engines):
    """answer_losses sees exactly the supervised tokens training and evaluation score."""
    from ecombot.data import Conversation

    llama, _ = engines
    conv = Conversation(QUESTIONS[0] + [{"role": "assistant", "content": "It ships today."}])
    encoded = encode_conversations([conv], llama.tokenizer, PROMPT, 1024)
    sums, counts = llama.answer_losses(encoded.examples, BASE)
    assert counts[0] == sum(label != -100 for label in encoded.examples[0]["labels"][1:]) and sums[0] > 0


def test_both_engines_score_with_the_same_tokens_left_out(engines):
    """Held-out losses from llama.cpp's logits leave out what PyTorch's loss leaves out (models/vocab.py): the marked
    look-alikes, except at a position whose target is one of them (the answer's first token here)."""
    from ecombot.data import Conversation
    from ecombot.evaluate.heldout import engine_item_losses

    llama, torch_engine = engines
    convs = [Conversation(q + [{"role": "assistant", "content": "Your order ships in 3 days."}]) for q in QUESTIONS]
    first = encode_conversations(convs[:1], llama.tokenizer, PROMPT, 1024).examples[0]
    target = next(label for label in first["labels"] if label != -100)
    unmasked, _ = engine_item_losses(llama, convs, BASE)
    head = torch_engine.model.get_output_embeddings()
    left_out = sorted({target, *range(len(llama.tokenizer) - 40, len(llama.tokenizer) - 20)})
    kept = llama.never_output, getattr(head, "never_output", None)
    try:
        llama.never_output, head.never_output = np.array(left_out), torch.tensor(left_out)
        ours, _ = engine_item_losses(llama, convs, BASE)
        theirs, _ = engine_item_losses(torch_engine, convs, BASE)
    finally:
        llama.never_output, head.never_output = kept
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert (ours < unmasked).all()  # 20+ columns fewer in every softmax, the answer's own first token still scored
