"""precision int8: fp32 CPU training whose frozen base products run in int8 (speedups/int8.py)."""

import copy
import json

import pytest
import torch

from test_fused_lora import lora_model
from ecombot.errors import ConfigError
from ecombot.models import resolve_precision
from ecombot.speedups import int8
from ecombot.speedups.int8 import INT8_WEIGHT, Int8Weight
from ecombot.speedups.lora import use_fused_lora, use_int8_base

pytestmark = pytest.mark.skipif(not int8.pays(), reason=f"int8 products do not run here: {int8.why_not()}")


def exact(q: torch.Tensor, row_scales: torch.Tensor, w: torch.Tensor, col_scales: torch.Tensor | None):
    """The integer product and its scales in float64: what the int8 path must give up to fp32 rounding."""
    out = (q.double() @ w.double()) * row_scales.double()[:, None]
    return out if col_scales is None else out * col_scales.double()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("rows", [1, 37, 300])
def test_products_are_the_integer_products_of_the_scaled_rows_and_close_to_fp32(rows):
    torch.manual_seed(0)
    x, w, grad = torch.randn(rows, 64), torch.randn(96, 64) * 0.05, torch.randn(rows, 96)
    if rows > 2:
        x[0] *= 40  # an outlier row keeps its own scale: the other rows lose nothing to it
        x[-1] = 0  # a zero row gives zeros, not NaN
    weight = Int8Weight.of(w, int8.weight_levels())
    assert weight.values.dtype == torch.int8 and weight.values.abs().max() == int8.weight_levels()

    out = int8.linear(x, weight)
    q, row_scales = int8._quantize_rows(x, None)
    assert torch.allclose(out.double(), exact(q, row_scales, weight.values.t(), weight.scales), rtol=1e-5, atol=1e-6)
    assert relative_error(out, x @ w.t()) < 0.03
    if rows > 2:
        assert (out[-1] == 0).all() and relative_error(out[1:-1], x[1:-1] @ w.t()) < 0.03

    back = int8.input_gradient(grad, weight)
    q, row_scales = int8._quantize_rows(grad, weight.scales)  # the weight's channel scales folded into the columns
    assert torch.allclose(back.double(), exact(q, row_scales, weight.values, None), rtol=1e-5, atol=1e-6)
    assert relative_error(back, grad @ w) < 0.03


def test_weights_keep_seven_bits_where_the_cpu_has_no_vnni(monkeypatch):
    """Without VNNI, oneDNN sums pairs of u8 x s8 products in 16 bits with saturation: 8-bit weights overflow."""
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert int8.weight_levels() == 127
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "fma"})
    assert int8.weight_levels() == 63
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"sse4_2"})
    assert not int8.pays() and int8.why_not() == "no AVX2"


def loss_and_grads(model, ids):
    model.zero_grad()
    logits = model(input_ids=ids).logits
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_layers_multiply_their_frozen_base_in_int8_and_train_like_fp32(monkeypatch):
    reference = lora_model()
    use_fused_lora(reference)
    quantized = copy.deepcopy(reference)
    assert use_int8_base(quantized) == 14 and use_int8_base(quantized) == 14  # once per layer, kept on a 2nd call
    bases = [m.base_layer for m in quantized.modules() if hasattr(m, "lora_A")]
    assert all(getattr(b, INT8_WEIGHT).values.dtype == torch.int8 for b in bases)
    assert all(b.weight.dtype == torch.float32 for b in bases)  # the fp32 weights stay (saving, merging, answering)

    products = []
    monkeypatch.setattr(torch, "_int_mm", lambda a, b, _mm=torch._int_mm: products.append(a.shape) or _mm(a, b))
    ids = torch.randint(3, 64, (2, 9))
    ref_logits, ref_grads = loss_and_grads(reference, ids)
    assert not products  # a model without int8 copies stays fp32
    logits, grads = loss_and_grads(quantized, ids)
    forward = 14
    assert len(products) > forward  # forward, and the input gradients in backward
    assert relative_error(logits, ref_logits) < 0.05
    for name, grad in ref_grads.items():
        cosine = torch.nn.functional.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


def test_precision_int8_is_for_cpu_training(monkeypatch):
    assert resolve_precision("int8", "cpu", training=True) == "int8"
    assert resolve_precision("int8", "cpu") == "fp32"  # answering and scoring use the fp32 weights int8 trained
    native_bf16 = resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu", training=True) == ("bf16" if native_bf16 else "int8")
    with pytest.raises(ConfigError, match="int8 is for training on an x86 CPU"):
        resolve_precision("int8", "cuda", training=True)
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"sse4_2"})
    with pytest.raises(ConfigError, match="no AVX2"):
        resolve_precision("int8", "cpu", training=True)


def test_a_run_at_precision_int8_trains_with_int8_products_and_records_it(tiny_model_dir, small_dataset, tmp_path):
    from test_train import log_of, tiny_config

    from ecombot.train import train

    run = tmp_path / "int8"
    result = train(tiny_config(tiny_model_dir, small_dataset, run, precision="int8"), show_progress=False)
    recorded = json.loads((run / "run_config.json").read_text())
    assert result.precision == recorded["precision"] == "int8"
    assert recorded["results"]["speedups"]["changed"]["int8_base"] == 14
    losses = [r["loss"] for r in log_of(run) if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
