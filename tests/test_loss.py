import torch

from ecombot.train.data import PadCollator
from ecombot.train.loss import supervised_loss, supervised_positions
from conftest import make_tiny_model


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


def test_answer_only_logits_give_the_full_logits_loss():
    model = make_tiny_model(vocab_size=64).eval()
    b = batch()
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    ours = supervised_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
    assert torch.allclose(ours, full, atol=1e-5), (ours, full)
    # normalising by a larger token count (gradient accumulation over several batches) scales the sum
    assert torch.allclose(supervised_loss(model, b["input_ids"], b["attention_mask"], b["labels"], num_items=10),
                          full * 5 / 10, atol=1e-5)


def test_gradients_match_the_full_logits_loss():
    model = make_tiny_model(vocab_size=64)
    b = batch()
    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    supervised_loss(model, b["input_ids"], b["attention_mask"], b["labels"]).backward()
    for got, want in zip((p.grad for p in model.parameters()), expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_chunked_cross_entropy_equals_one_call():
    from ecombot.train.loss import chunked_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(50, 64, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 64, (50,))
    weights = torch.rand(50, dtype=torch.float64)
    chunked = chunked_cross_entropy(logits, targets, chunk=7)
    (chunked * weights).sum().backward()
    chunked_grad = logits.grad.clone()
    logits.grad = None
    whole = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    (whole * weights).sum().backward()
    assert chunked.dtype == torch.float64 and torch.allclose(chunked, whole, atol=1e-6)
    assert torch.allclose(chunked_grad, logits.grad, atol=1e-6)


def test_gradients_match_the_full_logits_loss_when_chunked(monkeypatch):
    import ecombot.train.loss as loss

    monkeypatch.setattr(loss, "CE_CHUNK_ELEMENTS", {"cpu": 2 * 64, "other": 2 * 64})
    assert loss.chunk_rows(torch.empty(5, 64)) == 2  # the 5 supervised positions go in 3 chunks
    test_gradients_match_the_full_logits_loss()


def test_cpu_chunks_of_the_gemma_vocabulary_fit_in_cache():
    from ecombot.train.loss import chunk_rows

    assert chunk_rows(torch.empty(0, 262144)) == 16
    assert chunk_rows(torch.empty(0, 64)) == 65536


def test_lora_inputs_stay_bf16_and_the_loss_does_not_change():
    """The no-copy lever: LoRA sees bf16 activations under autocast; loss and gradients match the copying path."""
    from peft import LoraConfig, get_peft_model

    from ecombot.train.recipe import keep_activations_in_bf16

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
            value = supervised_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
        value.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])
        return value.item(), grads, seen

    copied, copied_grads, copied_dtypes = run(no_copy=False)
    kept, kept_grads, kept_dtypes = run(no_copy=True)
    assert set(copied_dtypes) == {torch.float32} and set(kept_dtypes) == {torch.bfloat16}
    assert abs(kept - copied) <= 1e-2 * abs(copied)
    assert torch.nn.functional.cosine_similarity(kept_grads, copied_grads, dim=0) > 0.999
