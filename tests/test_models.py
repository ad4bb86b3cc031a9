import os
import time
from pathlib import Path

import pytest
import torch

from ecombot.errors import ModelError
from ecombot.models import (DEFAULT_MODEL, convert_gguf, cpu_has_native_bf16, load_for_inference, resolve_model,
                            resolve_precision)
from ecombot.models.registry import MARKER
from ecombot.run_dir import ADAPTER_FILES, RunDir


def test_local_paths_are_checked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="expected a model directory or a .gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="no such model directory"):
        resolve_model(str(tmp_path / "missing" / "model"))


def test_local_model_directory_resolves_to_itself(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_unreachable_hub_fails_fast_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.time()
    with pytest.raises(ModelError, match="Hugging Face Hub cannot be reached"):
        resolve_model("some-org/some-model")
    assert time.time() - started < 10


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOMBOT_HOME", str(tmp_path / "home"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(ModelError, match="cannot read this GGUF file"):
        resolve_model(str(bad))
    assert not any((tmp_path / "home" / "models").glob("broken*"))


def _fake_gguf_loaders(monkeypatch, tiny_model_dir, calls):
    import transformers

    real_tok, real_model = transformers.AutoTokenizer.from_pretrained, transformers.AutoModelForCausalLM.from_pretrained

    def tok(path, gguf_file=None, **kw):
        calls.append("tokenizer")
        t = real_tok(str(tiny_model_dir))
        t.chat_template = None
        return t

    def model(path, gguf_file=None, **kw):
        calls.append("model")
        return real_model(str(tiny_model_dir))

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)


def test_conversion_cache_is_atomic(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("ECOMBOT_HOME", str(tmp_path / "home"))
    calls: list[str] = []
    _fake_gguf_loaders(monkeypatch, tiny_model_dir, calls)
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    (models / ".tmp-m").mkdir()  # left behind by a killed conversion

    from transformers import PreTrainedModel

    real_save = PreTrainedModel.save_pretrained

    def killed(self, *a, **kw):
        raise KeyboardInterrupt  # the process is interrupted half way through writing

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(tmp_path / "m.gguf", "m", source="test")
    assert sorted(p.name for p in models.iterdir()) == [".m.lock"]  # nothing half-written, stale folder cleaned

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    path = convert_gguf(tmp_path / "m.gguf", "m", source="test")
    assert (path / MARKER).is_file() and (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert (path / "chat_template.jinja").read_text().startswith("{{ bos_token }}")  # Gemma template added
    calls.clear()
    assert convert_gguf(tmp_path / "m.gguf", "m", source="test") == path and calls == []  # cached: no reload
    from transformers import AutoConfig
    assert not hasattr(AutoConfig.from_pretrained(path), "quantization_config")


def test_precision_choice():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_unfinished_run_is_not_an_adapter(tmp_path):
    run = tmp_path / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelError, match="--resume"):
        RunDir(run).check_adapter()


def test_an_adapter_is_refused_while_its_run_is_unfinished(adapter_dirs, tmp_path, monkeypatch):
    """Killed mid-training (or mid-save), a run's adapter files may be an older adapter's or half replaced."""
    import json
    import shutil

    run = RunDir(tmp_path / "run")
    shutil.copytree(adapter_dirs["support"], run.path)
    run.check_adapter()  # a plain PEFT adapter (no run_config.json) loads
    run.write_info({"config": {}, "status": "running"})
    with pytest.raises(ModelError, match="not finished.*--resume"):
        run.check_adapter()
    with pytest.raises(ModelError, match="not finished"):
        load_for_inference(adapter=run.path, precision="fp32")
    run.write_info({"config": {}, "status": "complete"})
    run.check_adapter()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(json.loads(
        (run.path / "adapter_config.json").read_text())["base_model_name_or_path"]), str(adapter_dirs["fr"]))
    real_replace, moved = os.replace, []

    def die_after_one_adapter_file(src, dst):
        if Path(dst).name in ADAPTER_FILES:
            if moved:
                raise KeyboardInterrupt  # killed between the adapter's two files
            moved.append(dst)
        real_replace(src, dst)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(os, "replace", die_after_one_adapter_file)
        run.save_adapter(model)
    assert moved  # one file of the new adapter is in place, the other is still the old one's
    with pytest.raises(ModelError, match="not finished"):
        run.check_adapter()


def test_adapter_for_another_base_model_is_refused(tmp_path, tiny_model_dir, small_dataset):
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from ecombot.config import load_config
    from ecombot.train import train

    run = tmp_path / "run"
    train(load_config(None, model=str(tiny_model_dir), data=str(small_dataset), output=str(run), max_steps=1,
                      eval_steps=1, batch_size=4, precision="fp32"), show_progress=False)
    other = tmp_path / "other-model"
    config = Gemma3TextConfig(vocab_size=500, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    Gemma3ForCausalLM(config).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    with pytest.raises(ModelError, match="does not fit base model"):
        load_for_inference(model=str(other), adapter=run, precision="fp32")
    loaded = load_for_inference(adapter=run, precision="fp32")  # the run's own base is found from its config
    assert loaded.model_dir == tiny_model_dir.resolve() and loaded.model.dtype == torch.float32


def test_default_model_name():
    assert DEFAULT_MODEL == "gemma-3-270m"


def test_cached_models_load_bf16_from_a_bf16_copy_written_once(tiny_model_dir, tmp_path):
    import shutil

    import torch

    from ecombot.models import load_base_model
    from ecombot.models.registry import BF16_DIR

    cached = tmp_path / "cached"
    shutil.copytree(tiny_model_dir, cached)
    (cached / MARKER).write_text("{}")  # a converted model in ecombot's cache
    fp32 = load_base_model(cached, dtype=torch.float32)
    assert not (cached / BF16_DIR).exists()  # fp32 loads read the fp32 weights
    bf16 = load_base_model(cached, dtype=torch.bfloat16)
    copy = cached / BF16_DIR
    assert (copy / MARKER).is_file() and not list(cached.glob(".tmp-*"))
    for (name, a), (_, b) in zip(fp32.state_dict().items(), bf16.state_dict().items()):
        assert b.dtype == torch.bfloat16 and torch.equal(b, a.to(torch.bfloat16)), name
    assert bf16.name_or_path == bf16.config._name_or_path == str(cached)  # adapters point at the tokenizer's dir
    written = (copy / "model.safetensors").stat().st_mtime_ns
    load_base_model(cached, dtype=torch.bfloat16)
    assert (copy / "model.safetensors").stat().st_mtime_ns == written  # reused, not rewritten
    load_base_model(tiny_model_dir, dtype=torch.bfloat16)  # a user's own directory is never written into
    assert not (tiny_model_dir / BF16_DIR).exists()


def test_importing_ecombot_enlarges_onednns_kernel_cache_unless_the_user_set_it():
    import os
    import subprocess
    import sys

    script = "import os, ecombot; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    ours = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    theirs = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "2048"})
    assert (ours.stdout.strip(), theirs.stdout.strip()) == ("16384", "2048")


BUILD_AT_ONCE = r"""
import sys, time
from pathlib import Path

import transformers
from transformers import PreTrainedModel

from ecombot.models.registry import bf16_weights, convert_gguf

what, tiny, signals, me = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
other = signals / f"started-{1 - int(me)}"
real_save = PreTrainedModel.save_pretrained


def save_once_both_started(self, *args, **kwargs):
    with open(signals / "saves", "a") as log:
        log.write(me + "\n")
    deadline = time.time() + 120
    while not other.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the other process is past its cache check: it converts too, unless something makes it wait
    return real_save(self, *args, **kwargs)


PreTrainedModel.save_pretrained = save_once_both_started
if what == "gguf":  # no real GGUF file: the reader returns the tiny model, as in _fake_gguf_loaders
    real_tok, real_model = transformers.AutoTokenizer.from_pretrained, transformers.AutoModelForCausalLM.from_pretrained
    transformers.AutoTokenizer.from_pretrained = lambda path, gguf_file=None, **kw: real_tok(str(tiny))
    transformers.AutoModelForCausalLM.from_pretrained = lambda path, gguf_file=None, **kw: real_model(str(tiny))
(signals / f"started-{me}").write_text("")
built = convert_gguf(signals / "m.gguf", "m", source="test") if what == "gguf" else bf16_weights(tiny)
print(built)
"""


@pytest.mark.parametrize("what", ["gguf", "bf16"])
def test_two_processes_building_the_same_model_at_once_build_it_once(tiny_model_dir, tmp_path, what):
    """The first run under torchrun: every rank asks for the converted default model (and its bf16 copy) at once.
    One builds it, the others wait for it; no process deletes or replaces a finished one."""
    import shutil
    import subprocess
    import sys

    cached = tmp_path / "cached"
    shutil.copytree(tiny_model_dir, cached)
    (cached / MARKER).write_text("{}")  # a converted model: bf16_weights writes its copy inside
    env = {**os.environ, "ECOMBOT_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    source = tiny_model_dir if what == "gguf" else cached
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_AT_ONCE, what, str(source), str(tmp_path), str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    built = {Path(out.strip().splitlines()[-1]) for out, _ in outputs}
    assert len(built) == 1 and (built.pop() / MARKER).is_file()
    assert len((tmp_path / "saves").read_text().split()) == 1  # built once; the other process waited for it


def test_a_tokenizer_is_read_once_until_its_files_change(tiny_model_dir, tmp_path):
    """A learn round, an evaluation and the quickstart each ask for the tokenizer several times (~3 s a read for
    Gemma's): the same object comes back until a file of the model directory changes; export's chat template goes on
    a copy, not on the shared one."""
    import shutil

    from ecombot.models import load_tokenizer

    copy_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy_dir)
    first = load_tokenizer(copy_dir)
    assert load_tokenizer(copy_dir) is first and load_tokenizer(Path(str(copy_dir) + "/.")) is first
    (copy_dir / "tokenizer_config.json").write_text((copy_dir / "tokenizer_config.json").read_text() + "\n")
    reread = load_tokenizer(copy_dir)
    assert reread is not first and reread.chat_template == first.chat_template

