import torch

import pytest

from conftest import make_tiny_model
from ecombot import speedups
from ecombot.models import PadCollator
from ecombot.models.loss import supervised_loss, supervised_positions


def batch():
    collate = PadCollator(pad_token_id=0)
    examples = [
        {"input_ids": [2, 10, 11, 12, 13, 14, 15], "labels": [-100, -100, -100, 12, 13, 14, -100]},
        {"input_ids": [2, 20, 21, 22], "labels": [-100, -100, 21, 22]},
    ]
    return collate(examples)


def test_collator_pads_right_and_masks_padding():
    b = batch()
    assert b["input_ids"][1].tolist() == [2, 20, 21, 22, 0, 0, 0]
    assert b["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert b["labels"][1].tolist() == [-100, -100, 21, 22, -100, -100, -100]


def test_supervised_positions_shift_by_one():
    b = batch()
    assert supervised_positions(b["labels"]).nonzero().tolist() == [[0, 2], [0, 3], [0, 4], [1, 1], [1, 2]]


@pytest.mark.parametrize("with_speedups", [False, True], ids=["plain", "speedups"])
def test_answer_only_logits_give_the_full_logits_loss(with_speedups):
    model = make_tiny_model(vocab_size=64).eval()
    if with_speedups:
        speedups.apply(model, mode="train")
    b = batch()
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    ours = supervised_loss(model, b)
    assert torch.allclose(ours, full, atol=1e-5), (ours, full)
    # normalising by a larger token count (gradient accumulation over several batches) scales the sum
    assert torch.allclose(supervised_loss(model, b, num_items=10),
                          full * 5 / 10, atol=1e-5)


@pytest.mark.parametrize("with_speedups", [False, True], ids=["plain", "speedups"])
def test_gradients_match_the_full_logits_loss(with_speedups):
    model = make_tiny_model(vocab_size=64)
    b = batch()
    if with_speedups:
        speedups.apply(model, mode="train")
    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    supervised_loss(model, b).backward()
    for got, want in zip((p.grad for p in model.parameters()), expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_blocked_cross_entropy_equals_one_call(monkeypatch):
    import ecombot.speedups.head as loss

    monkeypatch.setattr(loss, "CE_BLOCK_ELEMENTS", {"cpu": 7 * 64, "other": 7 * 64})  # 50 rows in 8 blocks
    torch.manual_seed(0)
    logits = torch.randn(50, 64, dtype=torch.float64, requires_grad=True)
    original = logits.detach().clone()
    targets = torch.randint(0, 64, (50,))
    weights = torch.rand(50, dtype=torch.float64)
    ours = loss.CrossEntropy.apply(logits, targets)
    (ours * weights).sum().backward()
    our_grad = logits.grad.clone()
    logits.grad = None
    whole = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    (whole * weights).sum().backward()
    assert torch.equal(logits.detach(), original)  # the input is never overwritten
    assert ours.dtype == torch.float64 and torch.allclose(ours, whole, atol=1e-12)
    assert torch.allclose(our_grad, logits.grad, atol=1e-12)


def test_bf16_logits_give_an_fp32_loss():
    from ecombot.speedups.head import CrossEntropy

    torch.manual_seed(0)
    logits = (torch.randn(6, 300) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 300, (6,))
    ours = CrossEntropy.apply(logits, targets)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none"), atol=1e-5)


def test_one_pass_head_cross_entropy_equals_logits_then_cross_entropy():
    """The online log-sum-exp over vocabulary chunks: exact in fp64, including rows whose maximum comes late."""
    from ecombot.speedups.head import head_cross_entropy_rows

    torch.manual_seed(0)
    hidden = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64)
    weight[47] *= 6  # a large logit in the last (short) chunk forces a rescale of everything summed before
    targets = torch.tensor([0, 6, 7, 13, 14, 48, 49, 47, 21])
    grad = torch.empty_like(hidden)
    ours = head_cross_entropy_rows(hidden.detach(), weight, targets, chunk=7, grad_into=grad)
    whole = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    whole.sum().backward()
    assert ours.dtype == torch.float64 and torch.allclose(ours, whole, atol=1e-12)
    assert torch.allclose(grad, hidden.grad, atol=1e-12)
    assert torch.allclose(head_cross_entropy_rows(hidden.detach(), weight, targets, chunk=64), whole, atol=1e-12)


def frozen_head_model():
    model = make_tiny_model(vocab_size=64)
    model.get_output_embeddings().weight.requires_grad_(False)  # tied with the input embedding, frozen like LoRA's
    return model


def test_frozen_head_is_fused_with_the_loss_and_gives_the_full_logits_results(monkeypatch):
    import ecombot.speedups.head as loss

    # several row blocks (2 rows) for the 5 supervised positions, each walking the vocabulary in 5 chunks (the last
    # one short), so the running log-sum-exp is rescaled and targets fall in different chunks
    monkeypatch.setattr(loss, "HEAD_ROW_BLOCK", 2)
    monkeypatch.setattr(loss, "HEAD_VOCAB_CHUNK", {"cpu": 14, "other": 14})
    model = frozen_head_model()
    speedups.apply(model, mode="train")
    assert loss.fusable_head(model) is model.lm_head
    b = batch()
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    full.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    calls = []
    monkeypatch.setattr(loss.HeadCrossEntropy, "apply", lambda *a, _apply=loss.HeadCrossEntropy.apply:
                        calls.append(1) or _apply(*a))
    ours = supervised_loss(model, b)
    ours.backward()
    assert calls == [1]
    assert torch.allclose(ours, full, atol=1e-5), (ours, full)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, expected[name], atol=1e-5), name
    with torch.inference_mode():  # evaluation: the same losses, no gradient work
        assert torch.allclose(supervised_loss(model, b), full, atol=1e-5)


def test_heads_the_loss_cannot_apply_itself_keep_the_logits_path():
    from ecombot.speedups.head import fusable_head

    assert fusable_head(make_tiny_model(vocab_size=64)) is None  # trainable head: its weight needs a gradient
    capped = frozen_head_model()
    capped.config.final_logit_softcapping = 30.0
    assert fusable_head(capped) is None


def test_lora_inputs_stay_bf16_and_the_loss_does_not_change():
    """The no-copy lever: LoRA sees bf16 activations under autocast; loss and gradients match the copying path."""
    from peft import LoraConfig, get_peft_model

    from ecombot.speedups.lora import keep_activations_in_bf16

    def run(no_copy: bool):
        torch.manual_seed(0)
        model = make_tiny_model(vocab_size=64).to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
        if no_copy:
            keep_activations_in_bf16(model)
        seen = []
        lora_a = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default"))
        lora_a.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
        b = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = supervised_loss(model, b)
        value.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])
        return value.item(), grads, seen

    copied, copied_grads, copied_dtypes = run(no_copy=False)
    kept, kept_grads, kept_dtypes = run(no_copy=True)
    assert set(copied_dtypes) == {torch.float32} and set(kept_dtypes) == {torch.bfloat16}
    assert abs(kept - copied) <= 1e-2 * abs(copied)
    assert torch.nn.functional.cosine_similarity(kept_grads, copied_grads, dim=0) > 0.999


def test_short_cpu_batches_attend_eagerly_with_the_same_loss_and_gradients(monkeypatch):
    import ecombot.speedups.attention as attention

    model = frozen_head_model()
    speedups.apply(model, mode="decode")
    assert model.config._attn_implementation == "sdpa"
    seen = []
    model.model.layers[0].self_attn.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    b = batch()
    results = []
    for budget in (0, 1 << 22):  # SDPA (weights over budget), then eager
        monkeypatch.setattr(attention, "EAGER_MAX_WEIGHTS", budget)
        model.zero_grad()
        loss = supervised_loss(model, b)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert seen == ["sdpa", "eager"] and model.config._attn_implementation == "sdpa"  # restored after the batch
    (sdpa_loss, sdpa_grads), (eager_loss, eager_grads) = results
    assert torch.allclose(eager_loss, sdpa_loss, atol=1e-5)
    for got, want in zip(eager_grads, sdpa_grads):
        assert torch.allclose(got, want, atol=1e-5)
