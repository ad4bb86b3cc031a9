import copy

import pytest
import torch

from conftest import make_tiny_model
from ecombot.speedups.lora import LoRALinear, LoRAUpdate, use_fused_lora


def lora_model(dropout: float = 0.0, seed: int = 0, attention_bias: bool = False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = make_tiny_model(vocab_size=64)
    if attention_bias:  # q/k/v/o with biases (as in Qwen-style models), initialised non-zero
        base.config.attention_bias = True
        base = type(base)(base.config)
        with torch.no_grad():
            for name, param in base.named_parameters():
                if name.endswith("proj.bias"):
                    param.normal_(0, 0.5)
    model = get_peft_model(base, LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():  # non-zero B, so the update (and every LoRA gradient) matters
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return model


def loss_and_grads(model, ids):
    model.zero_grad()
    logits = model(input_ids=ids).logits
    loss = (logits * torch.linspace(-1, 1, logits.shape[-1])).sum()
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def count_fused_calls(monkeypatch):
    """Calls of each fused function: LoRALinear (base matmul included) or LoRAUpdate (around another base layer)."""
    calls = []
    for function in (LoRALinear, LoRAUpdate):
        monkeypatch.setattr(function, "apply", lambda *a, _apply=function.apply, _name=function.__name__:
                            calls.append(_name) or _apply(*a))
    return calls


@pytest.mark.parametrize("attention_bias", [False, True], ids=["no-bias", "bias"])
def test_fused_update_gives_pefts_values_and_gradients(monkeypatch, attention_bias):
    reference = lora_model(attention_bias=attention_bias)
    fused = copy.deepcopy(reference)
    assert use_fused_lora(fused) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    ids = torch.randint(3, 64, (2, 9))
    ref_logits, ref_grads = loss_and_grads(reference, ids)
    calls = count_fused_calls(monkeypatch)
    logits, grads = loss_and_grads(fused, ids)
    assert calls == ["LoRALinear"] * 14  # frozen nn.Linear bases: the base matmul is fused too
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert set(grads) == set(ref_grads) and any("lora_A" in n for n in grads)
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-4, rtol=1e-4), name
    with fused.disable_adapter(), torch.no_grad():  # adapters off: PEFT's own path, the base model's logits
        assert torch.allclose(fused(input_ids=ids).logits, fused.get_base_model()(input_ids=ids).logits)


def test_fused_update_under_bf16_autocast_stays_close_and_keeps_fp32_gradients():
    reference = lora_model()
    reference.get_base_model().to(torch.bfloat16)
    for name, param in reference.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
    fused = copy.deepcopy(reference)
    use_fused_lora(fused)
    ids = torch.randint(3, 64, (2, 9))
    results = []
    for model in (reference, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(loss_and_grads(model, ids))
    (ref_logits, ref_grads), (logits, grads) = results
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref_logits.float()).norm() / ref_logits.float().norm() < 2e-2
    for name, grad in ref_grads.items():
        assert grads[name].dtype == torch.float32
        assert (grads[name] - grad).norm() / grad.norm() < 5e-2, name


def test_layers_that_are_not_plain_lora_keep_pefts_forward(monkeypatch):
    model = lora_model(dropout=0.1)  # dropout on the adapter input: PEFT's own forward applies it
    use_fused_lora(model)
    calls = count_fused_calls(monkeypatch)
    model.train()
    model(input_ids=torch.randint(3, 64, (1, 5))).logits.sum().backward()
    assert calls == []
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_fused_update_over_a_4bit_base_gives_pefts_values_and_gradients(tiny_model_dir, monkeypatch):
    """QLoRA: the bitsandbytes NF4 base layer is called as it is; the update around it is the same as PEFT's."""
    from peft import LoraConfig, get_peft_model

    from ecombot.models import load_base_model

    torch.manual_seed(0)
    base = load_base_model(tiny_model_dir, quantize_4bit=True, device="cpu")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    ids = torch.randint(3, 64, (2, 9))
    ref_logits, ref_grads = loss_and_grads(model, ids)
    assert use_fused_lora(model) == 2 * 7
    calls = count_fused_calls(monkeypatch)
    logits, grads = loss_and_grads(model, ids)
    assert calls == ["LoRAUpdate"] * 14  # the 4-bit layer runs its own matmul
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-4, rtol=1e-3), name
