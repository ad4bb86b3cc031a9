"""End to end on the real embedded Gemma 3 270M, converted into a fresh $ECOMBOT_HOME (the first-run path)."""

import json

import pytest
import torch

from ecombot.config import load_config
from ecombot.data import read_file
from ecombot.evaluate import heldout_loss
from ecombot.models import DEFAULT_MODEL, load_for_inference, resolve_model
from ecombot.train import train

pytestmark = pytest.mark.slow


def test_default_model_converts_trains_reloads_and_answers(tmp_path, monkeypatch, small_dataset):
    monkeypatch.setenv("ECOMBOT_HOME", str(tmp_path / "home"))
    model_dir = resolve_model(DEFAULT_MODEL)  # converts the GGUF once (~55 s on the 2-core machine, not asserted)
    assert not list((tmp_path / "home" / "models").glob(".tmp-*"))

    def converts_again(*args, **kwargs):
        raise AssertionError("the converted model was not reused from the cache")
    with monkeypatch.context() as patch:
        patch.setattr("ecombot.models.registry.convert_gguf", converts_again)
        cached = load_for_inference(DEFAULT_MODEL)
    assert cached.tokenizer.convert_ids_to_tokens([105, 106]) == ["<start_of_turn>", "<end_of_turn>"]

    run = tmp_path / "run"
    cfg = load_config(None, data=str(small_dataset), output=str(run), max_steps=6, eval_steps=3, batch_size=4,
                      learning_rate=4e-4, eval_max_examples=8, logging_steps=1)
    result = train(cfg, show_progress=False)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir)

    # plain PEFT reload, as a user without ecombot would do it
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(adapter_config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, str(run)).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How long do refunds take?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=[1, 106])
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert len(answer) > 0

    # fine-tuning lowered the held-out loss on test conversations
    loaded = load_for_inference(adapter=run)
    test = read_file(run / "data" / "test.jsonl").conversations[:8]
    with loaded.model.disable_adapter():
        before = heldout_loss(loaded.model, loaded.tokenizer, test, cfg.resolved_system_prompt())["loss"]
    after = heldout_loss(loaded.model, loaded.tokenizer, test, cfg.resolved_system_prompt())["loss"]
    assert after < before, (before, after)
    assert result.steps == 6

    # the merged export is the same model outside ecombot: plain Transformers, its own template and stop tokens
    from ecombot.export import export_merged

    export_merged(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    full = load_for_inference(adapter=run, precision="fp32")
    prompts = read_file(run / "data" / "test.jsonl").conversations  # 6 of the 60
    ours = heldout_loss(full.model, full.tokenizer, prompts, None)["loss"]
    theirs = heldout_loss(merged, full.tokenizer, prompts, None)["loss"]
    assert theirs == pytest.approx(ours, rel=0.01)
    same = 0
    for conv in prompts:
        text = exported_tokenizer.apply_chat_template(conv.messages[:-1], tokenize=False, add_generation_prompt=True)
        ids = exported_tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            plain = merged.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1]:].tolist()
            reference = model.generate(ids, max_new_tokens=32, do_sample=False,  # the plain PEFT model above
                                       eos_token_id=[1, 106])[0, ids.shape[1]:].tolist()
        same += plain == reference
        if len(plain) < 32:
            assert plain[-1] == 106  # stopped at <end_of_turn> from generation_config.json alone
    assert same >= 0.9 * len(prompts), f"{same}/{len(prompts)} greedy answers token-identical"
    check_gguf_exports(run, tmp_path, full, prompts)


def check_gguf_exports(run, tmp_path, full, convs):
    """The GGUF exports run in llama.cpp as the bot ran in ecombot: the merged f16 GGUF, and the Ollama export (the
    embedded Q4_K_M GGUF + the adapter as a LoRA GGUF, a Modelfile whose template renders the training prompt)."""
    import re

    from ecombot.chat import Decoding, TransformersEngine
    from ecombot.export import export_gguf, export_ollama, go_template, training_template
    from ecombot.models.llama_cpp import answer_loss, gguf_metadata, greedy, open_gguf
    from ecombot.models import encode_conversation, encode_prompt, stop_token_ids, with_system
    from ecombot.run_dir import RunDir

    system = RunDir(run).system_prompt()
    tokenizer = full.tokenizer
    stops = set(stop_token_ids(tokenizer))
    questions = [c.messages[:-1] for c in convs]
    engine = TransformersEngine(full, system, Decoding(max_new_tokens=32, repetition_penalty=1.0))
    reference = [answer.text for answer in engine.generate(questions)]
    prompt_ids = [encode_prompt(tokenizer, with_system(q, system)) for q in questions]
    encoded = [encode_conversation(tokenizer, with_system(c.messages, system), 1024) for c in convs]
    ours = heldout_loss(full.model, tokenizer, convs, system)["loss"]

    gguf = export_gguf(run, tmp_path / "gguf")
    ollama = export_ollama(run, tmp_path / "ollama")
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert f"FROM ./{ollama['base_file']}\nADAPTER ./adapter.gguf\n" in modelfile
    limit = ollama["answer_token_limit"]
    assert f"PARAMETER num_predict {limit}\n" in modelfile and limit >= 200
    assert re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1) == go_template(
        tokenizer.chat_template, system, tokenizer.eos_token)  # rendered by Go in tests/test_export_gguf.py
    # llama.cpp multiplies Q4_K weights with 8-bit activations, ecombot their dequantized values in fp32: on this
    # 6-step adapter's near-tied tokens that changes greedy answers (3/6 identical once), so that path is held to its
    # loss here and its answers are measured on a trained adapter by benchmarks/export_parity.py
    llama_cpp_runs = {}
    for name, model, lora, tolerance, identical in [
            # f16 vs fp32 flips a near-tie too: 5/6 at stop 55, the sixth identical for 16 tokens, then one loop
            # ("… mendatang\nI want to cancel…") where llama.cpp took another ("… mendatang\nमुझेcancel…")
            ("merged f16", tmp_path / "gguf" / gguf["file"], None, 0.01, 0.8),
            ("Q4_K_M base + LoRA", tmp_path / "ollama" / ollama["base_file"], tmp_path / "ollama" / "adapter.gguf",
             0.1, 0.0)]:
        metadata = gguf_metadata(model)
        assert metadata["tokenizer.ggml.eot_token_id"] == 106, name
        assert metadata["tokenizer.chat_template"] == training_template(tokenizer.chat_template, system), name
        llm = open_gguf(model, lora, n_ctx=1024)
        text = tokenizer.apply_chat_template(with_system(questions[0], system), tokenize=False, add_generation_prompt=True)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt_ids[0], name  # same prompt tokens
        # the export's suppress_tokens left out, as the README tells llama-server users (a 6-step adapter has not
        # learnt to rank <end_of_turn> above its look-alikes: models/vocab.py)
        answers = [greedy(llm, ids, 32, stops, gguf["suppress_tokens"]) for ids in prompt_ids]
        del llm
        assert all(a[-1] in stops for a in answers if len(a) < 32), name  # stopped at the end of the turn
        same = sum(tokenizer.decode(a, skip_special_tokens=True).strip() == r for a, r in zip(answers, reference))
        assert same >= identical * len(convs), f"{name}: {same}/{len(convs)} greedy answers identical to ecombot's"
        total, count = answer_loss(open_gguf(model, lora, n_ctx=1024, logits_all=True), encoded,
                                   gguf["suppress_tokens"])
        assert total / count == pytest.approx(ours, rel=tolerance), name
        llama_cpp_runs[name] = answers, total / count

    # `--engine llama.cpp` runs the same two files as the Ollama export (the adapter converted by the engine itself):
    # the answers of llama-cpp-python's own loop above, and the same loss through `evaluate`'s scoring
    from ecombot.chat import open_engine
    from ecombot.evaluate.heldout import engine_item_losses

    answers, loss = llama_cpp_runs["Q4_K_M base + LoRA"]
    llama = open_engine(None, [("e2e", run)], Decoding(max_new_tokens=32, repetition_penalty=1.0),
                        engine="llama.cpp", max_batch=1)
    assert llama.system_prompt("e2e") == system
    assert [g.text for g in llama.generate(questions)] == [tokenizer.decode(a, skip_special_tokens=True).strip()
                                                           for a in answers]
    sums, counts = engine_item_losses(llama, convs, "e2e")
    assert sums.sum() / counts.sum() == pytest.approx(loss, rel=1e-3)
    # the LoRA GGUF is what brings llama.cpp to ecombot's loss (measured: 3.007 with it, 3.818 without, ecombot 2.998)
    without_adapter, count = answer_loss(open_gguf(model, None, n_ctx=1024, logits_all=True), encoded,
                                         gguf["suppress_tokens"])
    assert abs(total / count - ours) < 0.1 * (without_adapter / count - ours)
