"""`ecombot export --format merged` on the tiny model: the merged model computes what base + adapter computed (into the
dequantized 4-bit weights for QLoRA), keeps its embeddings tied, renders the training prompt and stops at the end
of the turn, and is loadable by plain Transformers."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ecombot.cli import app
from ecombot.config import load_config
from ecombot.export import export_merged, training_template
from ecombot.models import load_base_model, load_for_inference, load_tokenizer, render
from ecombot.models.template import GEMMA_TEMPLATE, with_system
from ecombot.train import train

SYSTEM = 'You answer for "Harbor & Pine".\nBe brief {not} %} }} {{ here. Ünïcode 🙂'
CONVERSATIONS = [
    [{"role": "user", "content": "Where is my order?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Can I return a lamp?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Where is my order?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Refund?"}],
]


def run_with(tiny_model_dir, small_dataset, path, method="lora", system_prompt=None):
    """A finished tiny run whose adapter is made large (random lora_B), so a lost or misplaced delta shows."""
    train(load_config(None, model=str(tiny_model_dir), data=str(small_dataset), output=str(path), max_steps=2,
                      eval_steps=2, batch_size=4, precision="fp32", val_fraction=0.15, test_fraction=0.15,
                      knowledge="none", method=method, system_prompt=system_prompt), show_progress=False)
    weights = load_file(path / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=generator) * 0.3 if "lora_B" in k else v for k, v in weights.items()}
    save_file(weights, path / "adapter_model.safetensors")
    return path


def logits_of(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def sample_ids(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    return torch.tensor([tokenizer(render(tokenizer, CONVERSATIONS[1]), add_special_tokens=False)["input_ids"]])


def test_merged_lora_loads_in_transformers_and_computes_what_base_plus_adapter_did(tiny_model_dir, small_dataset,
                                                                                    tmp_path, sample_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = run_with(tiny_model_dir, small_dataset, tmp_path / "run")
    summary = json.loads((run / "data_summary.json").read_text())
    summary["answer_tokens"]["max"] = 400  # as if the store wrote long step-by-step answers
    (run / "data_summary.json").write_text(json.dumps(summary))
    record = export_merged(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with_adapter = PeftModel.from_pretrained(load_base_model(tiny_model_dir, device="cpu"), str(run)).eval()
    base = load_base_model(tiny_model_dir, device="cpu").eval()

    expected = logits_of(with_adapter, sample_ids)
    assert torch.allclose(logits_of(merged, sample_ids), expected, atol=1e-4)
    assert (logits_of(base, sample_ids) - expected).abs().max() > 0.1  # the adapter's delta is in there

    # tied embeddings stay one matrix; no lm_head written beside it
    assert merged.config.tie_word_embeddings and "lm_head.weight" not in load_file(tmp_path / "merged" / "model.safetensors")
    assert merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in merged.generation_config.eos_token_id and "<end_of_turn>" in record["stop_tokens"]
    assert record["method"] == "lora" and record["version"] == "v1" and not record["grounded"]
    saved = json.loads((tmp_path / "merged" / "ecombot_export.json").read_text())
    assert saved["base_model"] == str(tiny_model_dir)
    # runtimes are told an answer length with room for the longest answer the run trained on (400 * 1.25, in 32s)
    assert saved["answer_token_limit"] == 512
    assert "max_new_tokens=512)" in (tmp_path / "merged" / "README.md").read_text()


def test_template_renders_the_training_prompt_with_the_runs_system_prompt(tiny_model_dir, small_dataset, tmp_path):
    from transformers import AutoTokenizer

    run = run_with(tiny_model_dir, small_dataset, tmp_path / "run", system_prompt=SYSTEM)
    export_merged(run, tmp_path / "merged")
    exported = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ours = load_tokenizer(tiny_model_dir)
    assert ours.chat_template == GEMMA_TEMPLATE  # export baked the system prompt into a copy, not the shared one
    for messages in CONVERSATIONS:
        for generation_prompt in (False, True):
            trained = render(ours, with_system(messages, SYSTEM), add_generation_prompt=generation_prompt)
            assert exported.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=generation_prompt) == trained
    assert SYSTEM in exported.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    assert "French" in exported.apply_chat_template(CONVERSATIONS[2], tokenize=False)
    assert SYSTEM not in exported.apply_chat_template(CONVERSATIONS[2], tokenize=False)


def test_training_template_without_system_prompt_is_unchanged():
    assert training_template("{{ x }}", None) == "{{ x }}"


def test_qlora_merges_into_the_dequantized_4bit_weights(tiny_model_dir, small_dataset, tmp_path, sample_ids):
    """The adapter was trained against NF4 weights: merged into those (dequantized), the export computes what the
    4-bit base + adapter computed; merged into the original fp32 weights it would drift."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = run_with(tiny_model_dir, small_dataset, tmp_path / "run", method="qlora")
    record = export_merged(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert record["method"] == "qlora" and getattr(merged.config, "quantization_config", None) is None
    trained = PeftModel.from_pretrained(load_base_model(tiny_model_dir, quantize_4bit=True, device="cpu"),
                                        str(run)).eval()
    on_original = PeftModel.from_pretrained(load_base_model(tiny_model_dir, device="cpu"), str(run)).eval()
    expected = logits_of(trained, sample_ids)
    exported_error = (logits_of(merged, sample_ids) - expected).abs().max()
    original_error = (logits_of(on_original, sample_ids) - expected).abs().max()
    # bitsandbytes' CPU kernel itself differs from x @ dequantized W by ~0.4% (measured on one layer), so the
    # export is held to a twentieth of the drift of a merge into the original weights (measured: 0.04 vs 1.25)
    assert exported_error < original_error / 20, (exported_error, original_error)

    # ecombot's own chat, serve and evaluate answer with those weights too, not with the original ones
    loaded = load_for_inference(adapter=run, precision="fp32")
    assert torch.allclose(logits_of(loaded.model, sample_ids), logits_of(merged, sample_ids), atol=1e-4)


def test_cli_export_refuses_to_overwrite_and_names_unknown_versions(tiny_model_dir, small_dataset, tmp_path):
    run = run_with(tiny_model_dir, small_dataset, tmp_path / "run")
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["export", str(run), "--output", str(out)])
    assert first.exit_code == 0, first.output
    assert "merged in" in first.output and (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]

    again = CliRunner().invoke(app, ["export", str(run), "--output", str(out)])
    assert again.exit_code != 0 and "exists and is not empty" in str(again.exception)
    (out / "stale.txt").write_text("from an older export")
    replaced = CliRunner().invoke(app, ["export", str(run), "--output", str(out), "--overwrite"])
    assert replaced.exit_code == 0 and not (out / "stale.txt").exists()

    missing = CliRunner().invoke(app, ["export", str(run), "--output", str(tmp_path / "x"), "--version", "v9"])
    assert "no version 'v9' (versions: v1)" in str(missing.exception)

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    config = json.loads((unfinished / "run_config.json").read_text())
    (unfinished / "run_config.json").write_text(json.dumps({**config, "status": "running"}))
    refused = CliRunner().invoke(app, ["export", str(unfinished), "--output", str(tmp_path / "y")])
    assert "has not finished" in str(refused.exception) and not (tmp_path / "y").exists()


def test_the_modelfile_gives_answers_the_runs_answer_length():
    from types import SimpleNamespace

    from ecombot.export.ollama import modelfile

    source = SimpleNamespace(base_template=GEMMA_TEMPLATE, version="v1", tokenizer=SimpleNamespace(eos_token="<eos>"),
                             record={"run": "/runs/steps", "stop_tokens": ["<end_of_turn>"], "system_prompt": None,
                                     "answer_token_limit": 384})
    text = modelfile(source, {"model_file": "model.gguf"})
    assert "PARAMETER num_predict 384\n" in text and 'PARAMETER stop "<end_of_turn>"\n' in text
