"""Shared fixtures: a tiny randomly initialised Gemma 3 and a small BPE tokenizer built here (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


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
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
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
