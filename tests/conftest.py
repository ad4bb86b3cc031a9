"""Shared fixtures: a tiny randomly initialised Gemma 3 and a small BPE tokenizer built here (no downloads)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REQUIRE_SYSTEM = os.environ.get("ECOMBOT_REQUIRE_SYSTEM_TESTS") == "1"

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


@pytest.fixture(autouse=True)
def own_database(tmp_path, monkeypatch):
    """Every test gets its own default database (knowledge bases, conversations): never the user's, never shared."""
    monkeypatch.setenv("ECOMBOT_DB", f"sqlite:///{tmp_path / 'ecombot-test.db'}")


def make_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])


def make_tiny_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
                              sliding_window=64, initializer_range=0.3, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                              layer_types=["sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Gemma 3 (random weights) + tokenizer + Gemma chat template, loadable by path."""
    from ecombot.data import builtin_path
    from ecombot.models.template import ensure_chat_template

    rows = [json.loads(line) for line in builtin_path().read_text().splitlines()[:400]]
    corpus = [m["content"] for r in rows for m in r["messages"]]
    tokenizer = make_tokenizer(corpus)
    model = make_tiny_model(len(tokenizer))
    ensure_chat_template(tokenizer, "gemma3_text")
    path = tmp_path_factory.mktemp("tiny-gemma")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from ecombot.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def write_small_dataset(path: Path) -> Path:
    """60 built-in conversations from 6 intents, as chat JSONL: enough to split and train on in seconds."""
    from ecombot.data import builtin_path

    rows = [json.loads(line) for line in builtin_path().read_text().splitlines()]
    intents = sorted({r["intent"] for r in rows})[:6]
    picked = []
    for intent in intents:
        picked += [r for r in rows if r["intent"] == intent and len(r["messages"]) == 2][:10]
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return path


@pytest.fixture()
def small_dataset(tmp_path) -> Path:
    return write_small_dataset(tmp_path / "small.jsonl")


@pytest.fixture(scope="session")
def talkative_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with whitespace tokens made unlikely, so its (random) answers have visible text to stream."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()
             and i not in tokenizer.all_special_ids]
    with torch.no_grad():
        model.get_output_embeddings().weight[blank] = 0
    path = tmp_path_factory.mktemp("talkative")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def random_adapters(model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters ("support", "fr") with random (non-zero) weights on `model_dir`, saved as PEFT adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = {}
    for seed, name in enumerate(["support", "fr"]):
        torch.manual_seed(seed + 10)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                               init_lora_weights=False))
        with torch.no_grad():
            for param_name, param in peft.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0, 0.5)
        dirs[name] = tmp_path_factory.mktemp(name)
        peft.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="session")
def adapter_dirs(talkative_model_dir, tmp_path_factory) -> dict[str, Path]:
    return random_adapters(talkative_model_dir, tmp_path_factory)


class RunningServer:
    """A uvicorn server on a free loopback port, in a background thread (a real socket, real HTTP)."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def running_server():
    return RunningServer


@pytest.fixture
def writes_in_place(monkeypatch) -> list[Path]:
    """Files opened for writing under their own name while the test runs: a process killed mid-write leaves
    them torn (safe writes go to a hidden temporary name and are renamed into place)."""
    import builtins
    import io
    import os

    seen: list[Path] = []
    real_open = io.open

    def watching_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax"):
            path = Path(file)
            if not any(part.startswith(".") for part in path.parts):
                seen.append(path)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", watching_open)
    monkeypatch.setattr(builtins, "open", watching_open)
    return seen


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL server (ECOMBOT_TEST_POSTGRES_URL); without one the test is skipped, or fails in CI."""
    url = os.environ.get("ECOMBOT_TEST_POSTGRES_URL")
    if not url:
        if REQUIRE_SYSTEM:
            pytest.fail("ECOMBOT_TEST_POSTGRES_URL is not set (.ci/postgres-up prints it)")
        pytest.skip("no PostgreSQL: run .ci/postgres-up and set ECOMBOT_TEST_POSTGRES_URL (CI always does)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def each_database_url(request, tmp_path):
    """A fresh database on SQLite, then on the real PostgreSQL server (its own schema per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    from sqlalchemy import create_engine, text

    server_url = request.getfixturevalue("postgres_url")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    yield server_url + ("&" if "?" in server_url else "?") + f"options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture()
def store_on_each_database(each_database_url):
    """A fresh conversation store on SQLite, then on the real PostgreSQL server."""
    from ecombot.serve import Store

    store = Store(each_database_url)
    assert store.engine.dialect.name == ("postgresql" if "postgresql" in each_database_url else "sqlite")
    yield store
    store.engine.dispose()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """A finished LoRA run of the tiny model on the small dataset (trained without a knowledge base: a module-scoped
    fixture runs before a test's own database exists), and its data file."""
    from ecombot.config import load_config
    from ecombot.train import train

    root = tmp_path_factory.mktemp("tiny-run")
    data = write_small_dataset(root / "small.jsonl")
    run = root / "run"
    train(load_config(None, model=str(tiny_model_dir), data=str(data), output=str(run), max_steps=2, eval_steps=2,
                      batch_size=4, precision="fp32", val_fraction=0.15, test_fraction=0.15, knowledge="none"),
          show_progress=False)
    return data, run


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory):
    """tests/go/ollama_render.go compiled: renders TEMPLATEs with Go's text/template and Ollama's chat data."""
    if shutil.which("go") is None:
        if REQUIRE_SYSTEM:
            pytest.fail("the Go toolchain is missing (Debian package golang-go): the Ollama template test needs it")
        pytest.skip("Go toolchain absent")
    binary = tmp_path_factory.mktemp("go") / "ollama_render"
    source = os.path.join(os.path.dirname(__file__), "go", "ollama_render.go")
    env = {**os.environ, "GOCACHE": str(binary.parent / "cache"), "GOPATH": str(binary.parent / "path")}
    subprocess.run(["go", "build", "-o", str(binary), source], check=True, env=env)

    def render(template: str, conversations: list[list[dict]]) -> list[str]:
        cases = [{"template": template, "messages": messages} for messages in conversations]
        done = subprocess.run([str(binary)], input=json.dumps(cases), capture_output=True, text=True, check=True)
        return json.loads(done.stdout)
    return render


@pytest.fixture
def write_catalog():
    """Writes products as a JSON Lines catalog (related SKUs dropped: a subset may not hold them) and returns its
    path."""
    import json

    def write(path: Path, products) -> Path:
        path.write_text("".join(json.dumps({**p.to_json(), "related": []}) + "\n" for p in products))
        return path
    return write
