"""GGUF and Ollama exports, the parts that do not need the real model (tests/test_e2e_default_model.py converts, runs
and scores the real exports in llama.cpp): the Ollama TEMPLATE rendered by Go's text/template as Ollama renders it
equals the training prompt; metadata rewriting sets the end-of-turn token and template and keeps the tensors; the
converter is found where the user put it and extracted alone; runs llama.cpp cannot apply as a LoRA are refused
before any work; bad flags fail with one line."""

import io
import sys
import tarfile

import numpy as np
import pytest
from typer.testing import CliRunner

from ecombot.cli import app
from ecombot.errors import EcombotError
from ecombot.export import export_lora_gguf, go_template, training_template
from ecombot.models import llama_cpp
from ecombot.models.template import FALLBACK_TEMPLATE, GEMMA_TEMPLATE
from test_export import CONVERSATIONS, SYSTEM


@pytest.mark.parametrize("base", ["gemma", "fallback"])
@pytest.mark.parametrize("system_prompt", [None, SYSTEM])
def test_ollama_template_renders_the_training_prompt(go_renderer, tiny_tokenizer, base, system_prompt):
    tokenizer = tiny_tokenizer
    base_template = GEMMA_TEMPLATE if base == "gemma" else FALLBACK_TEMPLATE
    saved = tokenizer.chat_template
    tokenizer.chat_template = training_template(base_template, system_prompt)
    try:
        expected = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                    for c in CONVERSATIONS]
    finally:
        tokenizer.chat_template = saved
    rendered = go_renderer(go_template(base_template, system_prompt, tokenizer.eos_token), CONVERSATIONS)
    # Ollama's tokenizer adds the BOS token that ecombot's template writes as text
    assert rendered == [text.removeprefix(tokenizer.bos_token) for text in expected]
    if system_prompt:
        assert system_prompt in rendered[0] and system_prompt not in rendered[2]  # a request's own system prompt wins


def test_ollama_refuses_a_template_it_cannot_translate():
    with pytest.raises(EcombotError, match="no Ollama form"):
        go_template("{{ messages }}", None, "</s>")


def test_rewrite_metadata_sets_end_of_turn_and_template_and_keeps_tensors(tmp_path):
    gguf = llama_cpp.gguf_module()
    source, output = tmp_path / "in.gguf", tmp_path / "out.gguf"
    writer = gguf.GGUFWriter(source, "gemma3")
    writer.add_eos_token_id(1)
    writer.add_chat_template("old template")
    writer.add_token_list(["<pad>", "<eos>", "<bos>"])
    tensors = {"token_embd.weight": np.arange(24, dtype=np.float32).reshape(3, 8),
               "blk.0.attn_q.weight": np.linspace(-1, 1, 64).astype(np.float16).reshape(8, 8)}
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    llama_cpp.rewrite_metadata(source, output, 106, "{{ new }}")
    metadata = llama_cpp.gguf_metadata(output)
    assert metadata["tokenizer.ggml.eot_token_id"] == 106 and metadata["tokenizer.ggml.eos_token_id"] == 1
    assert metadata["tokenizer.chat_template"] == "{{ new }}" and metadata["general.architecture"] == "gemma3"
    reader = gguf.GGUFReader(output)
    assert {t.name: np.array(t.data).tobytes() for t in reader.tensors} == {k: v.tobytes() for k, v in tensors.items()}
    assert [t for t in reader.fields[gguf.Keys.Tokenizer.LIST].contents()] == ["<pad>", "<eos>", "<bos>"]

    llama_cpp.rewrite_metadata(source, tmp_path / "kept.gguf", None)  # no template given: the old one stays
    kept = llama_cpp.gguf_metadata(tmp_path / "kept.gguf")
    assert kept["tokenizer.chat_template"] == "old template" and "tokenizer.ggml.eot_token_id" not in kept


def fake_sdist(path, with_converter=True):
    """A llama-cpp-python source distribution's layout, with files the extraction must leave out."""
    files = {"llama_cpp_python-9.9.9/vendor/llama.cpp/conversion/base.py": "x = 1\n",
             "llama_cpp_python-9.9.9/vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
             "llama_cpp_python-9.9.9/vendor/llama.cpp/convert_lora_to_gguf.py": "",
             "llama_cpp_python-9.9.9/vendor/llama.cpp/ggml/src/ggml.c": "int x;\n",
             "llama_cpp_python-9.9.9/llama_cpp/llama.py": ""}
    if with_converter:
        files["llama_cpp_python-9.9.9/vendor/llama.cpp/convert_hf_to_gguf.py"] = "print('converted')\n"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


def test_converter_comes_from_the_source_distribution_named_by_the_user(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOMBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ECOMBOT_LLAMA_CPP", str(fake_sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz")))
    tools = llama_cpp.converter_dir()
    assert tools == tmp_path / "home" / "tools" / "llama_cpp_python-9.9.9"
    extracted = sorted(str(p.relative_to(tools)) for p in tools.rglob("*") if p.is_file())
    assert extracted == ["conversion/base.py", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py",
                         "ecombot-model.json", "gguf-py/gguf/__init__.py"]
    assert llama_cpp.converter_dir() == tools  # once

    monkeypatch.setenv("ECOMBOT_LLAMA_CPP", str(fake_sdist(tmp_path / "broken.tar.gz", with_converter=False)))
    with pytest.raises(EcombotError, match="no vendor/llama.cpp/convert_hf_to_gguf.py"):
        llama_cpp.converter_dir()
    assert not (tmp_path / "home" / "tools" / "broken").exists()
    monkeypatch.setenv("ECOMBOT_LLAMA_CPP", str(tmp_path))
    with pytest.raises(EcombotError, match="not a llama.cpp source tree"):
        llama_cpp.converter_dir()


def test_a_failing_converter_reports_its_own_last_lines(tmp_path, monkeypatch):
    tree = tmp_path / "llama.cpp"
    (tree / "gguf-py").mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text("import sys\nprint('reading model')\n"
                                                "sys.exit('NotImplementedError: BPE pre-tokenizer was not recognized')\n")
    monkeypatch.setenv("ECOMBOT_LLAMA_CPP", str(tree))
    with pytest.raises(EcombotError, match="convert_hf_to_gguf.py failed:\n.*pre-tokenizer was not recognized"):
        llama_cpp.run_converter("convert_hf_to_gguf.py", [])


def test_q4_k_m_without_llama_cpp_python_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(EcombotError, match=r"pip install 'ecombot\[llama-cpp\]'"):
        llama_cpp.quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "q4_k_m")
    with pytest.raises(EcombotError, match=r"pip install 'ecombot\[llama-cpp\]'"):
        llama_cpp.open_gguf(tmp_path / "in.gguf")


@pytest.mark.parametrize("method", ["qlora", "dora"])
def test_lora_gguf_refuses_adapters_llama_cpp_cannot_apply_before_any_work(tiny_model_dir, small_dataset, tmp_path,
                                                                          method, monkeypatch):
    from ecombot.config import load_config
    from ecombot.train import train

    train(load_config(None, model=str(tiny_model_dir), data=str(small_dataset), output=str(tmp_path / "run"),
                      max_steps=1, eval_steps=1, batch_size=4, precision="fp32", val_fraction=0.15,
                      test_fraction=0.15, knowledge="none", method=method), show_progress=False)
    monkeypatch.setattr(llama_cpp, "run_converter", lambda *a: pytest.fail("converted a run it should refuse"))
    with pytest.raises(EcombotError, match=f"trained a {method} adapter.*--format gguf"):
        export_lora_gguf(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_export_flags_fail_with_one_line_before_any_work(tiny_run, tmp_path):
    _, run = tiny_run
    runner = CliRunner()
    unknown = runner.invoke(app, ["export", str(run), "--output", str(tmp_path / "a"), "--format", "onnx"])
    assert unknown.exit_code != 0 and "choose one of merged, gguf, lora-gguf, ollama" in unknown.output
    misplaced = runner.invoke(app, ["export", str(run), "--output", str(tmp_path / "b"), "--quant", "q8_0"])
    assert misplaced.exit_code != 0 and "--quant applies to --format gguf and ollama" in misplaced.output
    bad_quant = runner.invoke(app, ["export", str(run), "--output", str(tmp_path / "c"), "--format", "gguf",
                                    "--quant", "q3"])
    assert "--quant q3: choose one of f16, q8_0, q4_k_m" in str(bad_quant.exception)
    assert not any((tmp_path / name).exists() for name in "abc")
