import random

import pytest
import torch

from conftest import make_tiny_model
from ecombot import speedups
from ecombot.models import PackedCollator, PadCollator
from ecombot.models.loss import batch_tokens, supervised_loss, supervised_positions, token_losses
from ecombot.train.packing import pack, pack_budget, packed_rows


def examples(lengths: list[int], seed: int = 0) -> list[dict[str, list[int]]]:
    """Conversations of the given lengths: <bos> (id 2) + random tokens, the second half supervised."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [2] + [rng.randrange(3, 64) for _ in range(n - 1)]
        out.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return out


def test_best_fit_decreasing_fills_rows_and_keeps_every_example_once():
    lengths = [5, 5, 4, 3, 2, 1, 9, 1]
    rows = pack(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3  # 30 tokens in three full rows of 10
    assert pack(lengths, 10) == rows  # deterministic
    with pytest.raises(ValueError, match="12-token example does not fit a 10-token row"):
        pack([3, 12], 10)


def test_many_random_lengths_pack_with_little_padding():
    rng = random.Random(1)
    lengths = [rng.randint(40, 200) for _ in range(2000)]
    budget = pack_budget(lengths, 8)
    assert budget % 64 == 0 and budget >= 8 * sum(lengths) / len(lengths)
    rows = pack(lengths, budget)
    assert sorted(i for row in rows for i in row) == list(range(2000))
    assert sum(lengths) / (budget * len(rows)) > 0.98
    assert pack_budget([10, 500], 1) == 512  # at least the longest conversation


def test_collator_lays_conversations_end_to_end_with_restarting_positions():
    exs = examples([4, 3, 5])
    rows = packed_rows(exs, 8)  # best fit: [5, 3] and [4]
    batch = PackedCollator(pad_token_id=0, budget=8)(rows)
    assert batch["input_ids"].shape == (1, 16)
    assert batch["cu_seq_lens"].tolist() == [0, 5, 8, 12]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 0, 0, 0]
    assert batch["input_ids"][0, 12:].tolist() == [0, 0, 0, 0]
    assert (batch["labels"][0, 12:] == -100).all()
    assert batch["labels"][0, [0, 5, 8]].tolist() == [-100] * 3  # no token learns to predict the next conversation
    assert batch_tokens(batch) == 12


def frozen_head_model(**config):
    model = make_tiny_model(vocab_size=64)
    for name, value in config.items():
        setattr(model.config, name, value)
    model.get_output_embeddings().weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("eager_budget", [1 << 22, 0, None], ids=["eager", "sdpa", "without-speedups"])
def test_packed_rows_give_the_padded_batch_loss_gradients_and_conversations(monkeypatch, eager_budget):
    """Same values as one padded batch: attention stays inside each conversation (sliding window included: 6 tokens
    here, shorter than the conversations), positions restart, the row's padding changes nothing. With the speed-ups
    the packed kernel (eager or SDPA inside) does it; without them, Transformers' own mask from the positions."""
    import ecombot.speedups.attention as attention

    model = frozen_head_model(sliding_window=6)  # the masks of padded batches read the config
    if eager_budget is not None:
        monkeypatch.setattr(attention, "EAGER_MAX_WEIGHTS", eager_budget)
        speedups.apply(model, mode="decode")
    for layer in model.model.layers:  # the packed kernel reads the layer's
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 6
    exs = examples([9, 14, 5, 11, 7])
    results = []
    for batch in (PadCollator(0)(exs), PackedCollator(0, 32)(packed_rows(exs, 32))):
        model.zero_grad()
        losses, conversation = token_losses(model, batch)
        (losses.sum() / losses.numel()).backward()
        results.append((losses, conversation, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (padded, padded_rows, padded_grads), (packed, packed_rows_of, packed_grads) = results
    assert model.config._attn_implementation == "sdpa"  # restored after the packed batch
    # rows hold conversations in packing order: map each packed conversation back to its example
    order = [i for row in pack([len(e["input_ids"]) for e in exs], 32) for i in row]
    packed_as_examples = torch.tensor(order)[packed_rows_of]
    for i in range(len(exs)):
        assert torch.allclose(packed[packed_as_examples == i], padded[padded_rows == i], atol=1e-5), i
    for got, want in zip(packed_grads, padded_grads):
        assert torch.allclose(got, want, atol=1e-5)


def test_packed_attention_differs_without_the_conversation_boundaries():
    """The test above can fail: attending across the whole row changes the loss."""
    model = frozen_head_model().eval()
    speedups.apply(model, mode="decode")
    exs = examples([9, 14, 5])
    batch = PackedCollator(0, 32)(packed_rows(exs, 32))
    packed = supervised_loss(model, batch)
    one_sequence = dict(batch, cu_seq_lens=torch.tensor([0, int(batch["cu_seq_lens"][-1])]),
                        position_ids=torch.arange(32)[None])
    assert not torch.allclose(supervised_loss(model, one_sequence), packed, atol=1e-3)


def two_answer_examples() -> list[dict[str, list[int]]]:
    """Conversations with two answers each (a second turn after the first answer), so the answer tokens of one
    conversation are not one contiguous run, and two with no answer token at all (in the middle and at the end)."""
    out = []
    for ex in examples([9, 14, 5, 11, 7, 12], seed=3):
        n = len(ex["input_ids"])
        labels = list(ex["labels"])
        labels[n // 2 + 1:n // 2 + 3] = [-100, -100]  # a prompt span (the next question) inside the answers
        labels[1:3] = ex["input_ids"][1:3] if n > 8 else labels[1:3]  # an early answer, before most of the prompt
        out.append({"input_ids": ex["input_ids"], "labels": labels})
    unanswered = [{"input_ids": ex["input_ids"], "labels": [-100] * len(ex["input_ids"])}
                  for ex in examples([6, 8], seed=4)]
    return out[:3] + unanswered[:1] + out[3:] + unanswered[1:]


def one_pass_with_prompt_keys_detached(model, batch, monkeypatch) -> torch.Tensor:
    """The losses of the one-pass forward in which every layer's keys and values are cut from autograd except at
    the answer positions: by construction, the gradients answer-only backward should give."""
    import ecombot.speedups.attention as attention

    keep = supervised_positions(batch["labels"])
    selected = keep[0].nonzero().squeeze(1)
    kernel = attention.packed_attention

    def detached_prompt(module, query, key, value, *args, **kwargs):
        key, value = (t.detach().index_copy(2, selected, t.index_select(2, selected)) for t in (key, value))
        return kernel(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(attention, "packed_attention", detached_prompt)
    try:
        with attention.attention_for(model, batch["input_ids"], batch["cu_seq_lens"]):
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=keep,
                           use_cache=False).logits
    finally:
        monkeypatch.setattr(attention, "packed_attention", kernel)
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"][:, 1:][keep[:, :-1]], reduction="none")


@pytest.mark.parametrize("eager_budget", [1 << 22, 0, None], ids=["eager", "sdpa", "without-speedups"])
def test_answer_only_backward_keeps_the_losses_and_gives_the_gradients_of_detached_prompt_keys(monkeypatch,
                                                                                              eager_budget):
    """Answer-only backward (the prompt's keys/values recorded without autograd, the answers run again) gives the
    one-pass losses and exactly the gradients of a one-pass forward whose keys/values are detached everywhere but at
    the answer positions: sliding window, several answers per conversation and conversations without an answer in
    the row included. Those gradients differ from full backward's (what the recipe leaves out)."""
    import ecombot.speedups.attention as attention

    model = frozen_head_model(sliding_window=6)
    if eager_budget is not None:
        monkeypatch.setattr(attention, "EAGER_MAX_WEIGHTS", eager_budget)
        speedups.apply(model, mode="train")
    for layer in model.model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 6
    exs = two_answer_examples()
    batch = PackedCollator(0, 96)([{"examples": exs}])  # in this order, the unanswered ones in the middle and last
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for name in ("full", "answers", "reference"):
        model.zero_grad()
        if name == "reference":
            losses = one_pass_with_prompt_keys_detached(model, batch, monkeypatch)
        else:
            losses, conversations = token_losses(model, batch, answer_only_backward=name == "answers")
            grads[f"{name} conversations"] = conversations
        (losses.sum() / losses.numel()).backward()
        grads[name] = (losses.detach(), [p.grad.clone() for p in trainable])
    full, answers, reference = grads["full"], grads["answers"], grads["reference"]
    assert torch.allclose(answers[0], full[0], atol=1e-5) and torch.allclose(reference[0], full[0], atol=1e-5)
    assert torch.equal(grads["answers conversations"], grads["full conversations"])
    assert set(grads["full conversations"].tolist()) == {0, 1, 2, 4, 5, 6}  # 3 and 7 have no answer
    for got, want in zip(answers[1], reference[1]):
        assert torch.allclose(got, want, atol=1e-5)
    differ = sum(not torch.allclose(got, want, atol=1e-4) for got, want in zip(answers[1], full[1]))
    assert differ >= 3  # e.g. both layers' key/value weights
    with torch.no_grad():  # without gradients there is nothing to save: the one-pass forward
        assert torch.allclose(token_losses(model, batch, answer_only_backward=True)[0], full[0], atol=1e-5)


def test_a_row_without_answer_tokens_takes_the_one_pass_path():
    model = frozen_head_model()
    speedups.apply(model, mode="train")
    exs = [{"input_ids": ex["input_ids"], "labels": [-100] * len(ex["input_ids"])} for ex in examples([6, 8])]
    losses, _ = token_losses(model, PackedCollator(0, 16)([{"examples": exs}]), answer_only_backward=True)
    assert losses.numel() == 0
