"""The tokens no answer may contain (models/vocab.py): found by the head's look-alikes of the stop tokens, left out of
the training loss, of scoring and of every engine's decoding."""

import os
import shutil
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from ecombot import speedups
from ecombot.chat import Decoding, TransformersEngine
from ecombot.chat.llama_cpp_engine import LlamaCppEngine
from ecombot.models import load_for_inference, load_tokenizer, never_output, never_output_in, stop_token_ids
from ecombot.models.loss import supervised_loss
from ecombot.models.vocab import mark_never_output, stop_lookalikes


def plant_lookalikes(weight: torch.Tensor, stop: int, ids: list[int], seed: int = 0) -> None:
    """Make `ids` rows near-copies of the `stop` row (cosine > 0.95), as untrained tokens are in Gemma's head."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for scale, token in zip(np.linspace(0.8, 1.3, len(ids)), ids):
            noise = torch.randn(weight.shape[1], generator=generator) * weight[stop].norm() / weight.shape[1] ** 0.5
            weight[token] = weight[stop] * float(scale) + 0.05 * noise.to(weight.dtype)


def test_the_stop_tokens_lookalikes_are_found_and_nothing_else():
    torch.manual_seed(0)
    weight = torch.randn(60, 16)
    plant_lookalikes(weight, 7, [20, 21, 22])
    plant_lookalikes(weight, 1, [40])
    weight[30] = weight[7] + torch.randn(16) * weight[7].norm()  # same side, far from a copy (cosine ~0.7)
    assert F.cosine_similarity(weight[30], weight[7], dim=0) < 0.9
    assert stop_lookalikes(weight, [1, 7]).tolist() == [20, 21, 22, 40]
    assert stop_lookalikes(weight, [7]).tolist() == [20, 21, 22]
    assert stop_lookalikes(weight.to(torch.bfloat16), [1, 7]).tolist() == [20, 21, 22, 40]
    assert stop_lookalikes(weight, [99]).tolist() == []  # a stop id outside the vocabulary finds nothing


def test_a_head_without_lookalikes_leaves_nothing_out(tiny_model_dir, tiny_tokenizer):
    """A random head (the tests' models, other model families) has no row this close: nothing changes for it."""
    loaded = load_for_inference(model=str(tiny_model_dir), precision="fp32")
    assert never_output(loaded.model) is None
    assert never_output_in(tiny_model_dir, stop_token_ids(tiny_tokenizer)).tolist() == []
    assert TransformersEngine(loaded, None).never_output is None


def stop_batch():
    """Two conversations; the first answer ends with the stop token 1 (the tiny model's EOS), as answers do."""
    from ecombot.models import PadCollator

    return PadCollator(pad_token_id=0)([
        {"input_ids": [2, 10, 11, 12, 13, 1], "labels": [-100, -100, 11, 12, 13, 1]},
        {"input_ids": [2, 20, 21, 22], "labels": [-100, -100, 21, 22]},
    ])


def reference_losses(model, b, never: list[int], stop: int, training: bool):
    """PyTorch's cross-entropy of the supervised tokens over logits with the `never` columns at -inf, each row's own
    target excepted; in training, plus at the stop token's row its cross-entropy among itself and `never`."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    labels = b["labels"][:, 1:]
    keep = labels != -100
    logits, targets = logits[keep], labels[keep]
    masked = torch.stack([row.index_fill(0, torch.tensor([t for t in never if t != target]), float("-inf"))
                          for row, target in zip(logits, targets.tolist())])
    losses = F.cross_entropy(masked, targets, reduction="none")
    if training:
        ends = (targets == stop).nonzero().squeeze(1)
        cluster = logits[ends][:, [stop, *never]]
        losses = losses.index_add(0, ends, torch.logsumexp(cluster, dim=1) - cluster[:, 0])
    return losses.mean()


@pytest.mark.parametrize("path", ["plain", "logits", "fused"])
def test_the_loss_leaves_the_lookalikes_out_and_trains_the_stop_token_above_them(path, monkeypatch):
    """40-49 are look-alikes of the stop token 1, and so is 13, a target: the data holds it, so its own row scores
    it as written and every other row leaves it out. Loss and gradients equal PyTorch's on masked logits plus, in
    training, the stop token's cross-entropy among itself and its look-alikes (what a runtime that does not leave
    them out needs); scored without gradients (validation, evaluation), the masked loss alone. The three paths: no speed-ups,
    speed-ups with a trainable head, the head fused into the loss."""
    model = make_tiny_model(vocab_size=64)
    head = model.get_output_embeddings()
    plant_lookalikes(head.weight, 1, [*range(40, 50), 13])
    if path == "fused":
        head.weight.requires_grad_(False)
        # vocabulary chunks of 14 and blocks of 2 rows: a row's target is in another chunk than most left-out ids
        monkeypatch.setattr(speedups.head, "HEAD_VOCAB_CHUNK", {"cpu": 14, "other": 14})
        monkeypatch.setattr(speedups.head, "HEAD_ROW_BLOCK", 2)
    if path != "plain":
        speedups.apply(model, mode="train")
    assert (speedups.head.fusable_head(model) is not None) == (path == "fused")
    b = stop_batch()
    with torch.no_grad():
        unmasked = supervised_loss(model, b).item()
    assert mark_never_output(model, [1]) == 11
    never = [13, *range(40, 50)]
    reference = reference_losses(model, b, never, 1, training=True)
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    ours = supervised_loss(model, b)
    ours.backward()
    assert torch.isfinite(ours) and torch.allclose(ours, reference, atol=1e-5), (ours, reference)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, expected[name], atol=1e-5), name
    with torch.no_grad():
        scored = supervised_loss(model, b)
        assert torch.allclose(scored, reference_losses(model, b, never, 1, training=False), atol=1e-5)
    assert scored.item() < unmasked  # the look-alikes took probability from every target
    assert ours.item() > scored.item()  # training adds the stop token's cross-entropy among its look-alikes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_vocabulary_chunk_wholly_left_out_adds_nothing(dtype):
    """The fused head walks the vocabulary in chunks; a chunk whose every column is left out (the first one here)
    must add no probability, not turn the running log-sum-exp into NaN. bf16 takes the C kernel where it is built."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(4, 16).to(dtype), torch.randn(64, 16).to(dtype)
    targets, never = torch.tensor([3, 20, 63, 5]), torch.arange(0, 8)
    grad = torch.empty_like(hidden)
    losses = speedups.head.head_cross_entropy_rows(hidden, weight, targets, 8, grad, never)
    h = hidden.double().requires_grad_()
    logits = h @ weight.double().t()
    masked = torch.stack([row.index_fill(0, never[never != t], float("-inf")) for row, t in zip(logits, targets)])
    expected = F.cross_entropy(masked, targets, reduction="none")
    expected.sum().backward()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    assert torch.isfinite(losses).all() and torch.allclose(losses.double(), expected, atol=tolerance)
    assert torch.allclose(grad.double(), h.grad, atol=tolerance)
    rows = speedups.head.cross_entropy_rows(logits.detach().to(dtype), targets, 2, None, never)
    assert torch.allclose(rows.double(), expected, atol=tolerance)


def end_wanted_engine(tiny_model_dir):
    """An engine over the tiny model whose head, at the prompt's last position, wants to end the answer, and ranks
    a look-alike of <end_of_turn> (a bigger copy of its row) above <end_of_turn> itself."""
    loaded = load_for_inference(model=str(tiny_model_dir), precision="fp32")
    model, tokenizer = loaded.model, loaded.tokenizer
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    lookalike = max(set(range(len(tokenizer))) - set(stop_token_ids(tokenizer)))
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())  # untied: the prompt's tokens read as before
    engine = TransformersEngine(loaded, None, Decoding(max_new_tokens=6, repetition_penalty=1.0))
    conversation = [{"role": "user", "content": "Where is my order?"}]
    seen = []
    handle = head.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, -1].detach()))
    with torch.no_grad():
        model(input_ids=torch.tensor([engine.prompt_ids(conversation)]))
    handle.remove()
    with torch.no_grad():
        weight = head.weight
        weight[end] = seen[0] / seen[0].norm() * weight.norm(dim=1).max() * 4
        weight[lookalike] = weight[end] * 1.2
    return engine, conversation, end, lookalike


def test_an_answer_ends_at_the_end_of_turn_token_not_at_its_lookalike(tiny_model_dir):
    engine, conversation, end, lookalike = end_wanted_engine(tiny_model_dir)
    assert engine.never_output is None  # marked at load, before the look-alike was planted
    ran_on = engine.generate([conversation])[0]
    assert ran_on.finish_reason == "length"  # the look-alike won, and it stops nothing
    mark_never_output(engine.model, engine.stop_ids)
    engine.never_output = never_output(engine.model)
    assert engine.never_output.tolist() == [lookalike]
    stopped = engine.generate([conversation])[0]
    assert stopped.finish_reason == "stop" and stopped.text == "" and stopped.new_tokens == 1


def test_the_llama_cpp_engine_never_picks_a_lookalike():
    """`_pick` leaves them out before greedy choice and sampling (no llama.cpp needed: the rule is numpy's)."""
    row = types.SimpleNamespace(never_output=np.array([3, 5]), rng=np.random.default_rng(0))
    logits = np.array([0.0, 1.0, 2.0, 9.0, 3.0, 8.0], dtype=np.float32)
    assert LlamaCppEngine._pick(row, logits.copy(), [], Decoding(repetition_penalty=1.0)) == 4
    sampled = {LlamaCppEngine._pick(row, logits.copy(), [], Decoding(temperature=5.0, top_p=1.0)) for _ in range(200)}
    assert sampled and not sampled & {3, 5}


@pytest.fixture(scope="module")
def lookalike_model_dir(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """The tiny model saved with 5 look-alikes of <end_of_turn> in its (tied) head, as Gemma's untrained tokens."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("lookalikes")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    weights = load_file(folder / "model.safetensors")
    name = next(n for n in weights if n.endswith("embed_tokens.weight"))
    end = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    planted = sorted(set(range(len(tiny_tokenizer) - 6, len(tiny_tokenizer))) - set(stop_token_ids(tiny_tokenizer)))[:5]
    plant_lookalikes(weights[name], end, planted)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder, planted


def test_the_merged_export_tells_generate_and_other_runtimes_to_suppress_the_lookalikes(lookalike_model_dir,
                                                                                        small_dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    from ecombot.config import load_config
    from ecombot.export import export_merged
    from ecombot.train import train

    folder, planted = lookalike_model_dir
    assert never_output_in(folder, stop_token_ids(load_tokenizer(folder))).tolist() == planted
    run = tmp_path / "run"
    train(load_config(None, model=str(folder), data=str(small_dataset), output=str(run), max_steps=2, eval_steps=2,
                      batch_size=4, precision="fp32", val_fraction=0.15, test_fraction=0.15, knowledge="none"),
          show_progress=False)
    record = export_merged(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.generation_config.suppress_tokens == planted == record["suppress_tokens"]


def test_a_grammar_that_allows_only_lookalikes_keeps_them():
    """Left out after the grammar, never leaving a row without a token (a rare character written in byte tokens)."""
    from ecombot.chat.engine import NeverOutput

    scores = torch.tensor([[0.0, 5.0, 3.0, 1.0], [float("-inf"), float("-inf"), 2.0, float("-inf")]])
    out = NeverOutput(torch.tensor([1, 2]))(None, scores.clone())
    assert out[0].tolist() == [0.0, float("-inf"), float("-inf"), 1.0] and torch.equal(out[1], scores[1])
    row = types.SimpleNamespace(never_output=np.array([3, 5]), rng=np.random.default_rng(0))
    logits = np.array([0.0, 1.0, 2.0, 9.0, 3.0, 8.0], dtype=np.float32)
    only_lookalikes = np.array([False, False, False, True, False, True])
    assert LlamaCppEngine._pick(row, logits.copy(), [], Decoding(repetition_penalty=1.0), only_lookalikes) == 3


def test_low_bit_decoding_keeps_the_heads_marks():
    from ecombot.speedups.lowbit import use_low_bit_decoding

    model = make_tiny_model(vocab_size=64).to(torch.bfloat16)
    plant_lookalikes(model.get_output_embeddings().weight.data, 1, [40, 41])
    assert mark_never_output(model, [1]) == 2
    use_low_bit_decoding(model, 8)
    assert type(model.get_output_embeddings()).__name__ == "LowBitDecodeLinear"
    assert never_output(model).tolist() == [40, 41] and model.get_output_embeddings().stop_ids.tolist() == [1]


def test_llama_cpp_scores_leave_the_lookalikes_out_as_training_does():
    """The numpy cross-entropy behind the llama.cpp engine's held-out loss and the GGUF parity check equals
    PyTorch's training loss on the same logits: look-alikes out, a row's own target among them scored."""
    from ecombot.models import answer_cross_entropy

    torch.manual_seed(0)
    logits, targets, never = torch.randn(5, 30), torch.tensor([3, 7, 7, 20, 0]), torch.tensor([7, 8, 9, 21])
    head = types.SimpleNamespace(never_output=never)
    expected = speedups.head.CrossEntropy.apply(logits, targets, speedups.head.left_out(head, targets))
    ours = answer_cross_entropy(logits.numpy(), targets.numpy(), never.numpy())
    assert np.allclose(ours, expected.numpy(), atol=1e-5)
    assert np.allclose(answer_cross_entropy(logits.numpy(), targets.numpy(), never.numpy(), rows_per_block=2), ours)
    assert np.allclose(answer_cross_entropy(logits.numpy(), targets.numpy(), None),
                       F.cross_entropy(logits, targets, reduction="none").numpy(), atol=1e-5)
    # row 0 (target 3) loses the look-alikes' probability; rows 1-2 (target 7, a look-alike) still compete with 8, 9
    assert ours[0] < F.cross_entropy(logits[:1], targets[:1]).item()


def test_a_model_dirs_lookalikes_are_read_once_until_its_files_change(lookalike_model_dir, tiny_tokenizer,
                                                                     monkeypatch, tmp_path):
    from ecombot.models import vocab

    folder, stops = shutil.copytree(lookalike_model_dir[0], tmp_path / "model"), stop_token_ids(tiny_tokenizer)
    first = never_output_in(folder, stops)
    assert first.tolist() == lookalike_model_dir[1]
    calls = []
    monkeypatch.setattr(vocab, "stop_lookalikes", lambda *a: calls.append(a) or torch.tensor([5]))
    first.fill_(0)  # a caller's copy: the cache keeps its own
    assert never_output_in(folder, stops).tolist() == lookalike_model_dir[1] and calls == []
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten
    assert never_output_in(folder, stops).tolist() == [5] and len(calls) == 1
