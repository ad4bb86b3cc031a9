"""precision int8: fp32 CPU training whose frozen base products run in int8 (speedups/int8.py)."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from test_fused_lora import lora_model
from ecombot.errors import ConfigError
from ecombot.models import resolve_precision
from ecombot.speedups import int8
from ecombot.speedups.int8 import INT8_GRADIENTS
from ecombot.speedups.lora import use_fused_lora, use_int8_gradients

pytestmark = pytest.mark.skipif(not int8.pays(), reason=f"int8 products do not run here: {int8.why_not()}")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("rows", [1, 37, 300])
def test_input_gradients_are_the_integer_products_of_the_scaled_rows_and_close_to_fp32(rows):
    torch.manual_seed(0)
    w, grad = torch.randn(96, 64) * 0.05, torch.randn(rows, 96)
    if rows > 2:
        grad[0] *= 40  # an outlier row keeps its own scale: the other rows lose nothing to it
        grad[-1] = 0  # a zero row gives zeros, not NaN
    levels = int8.weight_levels()
    weight_q, weight_scales = int8.quantize_rows(w, None, levels)  # per output channel
    assert weight_q.dtype == torch.int8 and weight_q.abs().max() == levels
    assert torch.allclose(weight_scales, w.abs().amax(dim=1) / levels)

    back = int8.input_gradient(grad, w)
    q, row_scales = int8.quantize_rows(grad, weight_scales)  # the weight's channel scales folded into the columns
    assert q.abs().max() == 127
    exact = (q.double() @ weight_q.double()) * row_scales.double()[:, None]
    assert torch.allclose(back.double(), exact, rtol=1e-5, atol=1e-6)
    assert relative_error(back, grad @ w) < 0.03
    if rows > 2:
        assert (back[-1] == 0).all() and relative_error(back[1:-1], grad[1:-1] @ w) < 0.03


def test_a_non_finite_gradient_row_stays_non_finite():
    """NaN cast to int8 is undefined (0 on x86): the row is NaN instead, as fp32's product would be, so a diverging
    run still shows NaN."""
    w, grad = torch.randn(8, 16), torch.randn(3, 8)
    grad[0, 2], grad[2, 5] = float("nan"), float("inf")
    back = int8.input_gradient(grad, w)
    assert back[0].isnan().all() and back[2].isnan().all() and back[1].isfinite().all()


SATURATION_PROBE = """
import torch
from ecombot.speedups import int8
torch.manual_seed(0)
w, grad = torch.randn(512, 256), torch.randn(64, 512)
print(int8.weight_levels())
for levels in (127, 63):
    weight_q, weight_scales = int8.quantize_rows(w, None, levels)
    q, row_scales = int8.quantize_rows(grad, weight_scales)
    exact = (q.double() @ weight_q.double()) * row_scales.double()[:, None]
    got = torch._int_mm(q, weight_q).double() * row_scales.double()[:, None]
    print(((got - exact).abs().max() / exact.abs().max()).item())
"""


def test_seven_bit_weights_are_exact_where_onednn_runs_without_vnni():
    """With oneDNN capped at AVX2 (as on a CPU without VNNI), 8-bit weights saturate its 16-bit pair sums and 7-bit
    ones do not; ecombot picks 7 bits there."""
    done = subprocess.run([sys.executable, "-c", SATURATION_PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode == 0, done.stderr
    levels, error_127, error_63 = done.stdout.split()
    assert int(levels) == 63
    assert float(error_127) > 1e-3 and float(error_63) < 1e-6


def test_weights_keep_seven_bits_where_the_cpu_has_no_vnni(monkeypatch):
    """Without VNNI, oneDNN sums pairs of u8 x s8 products in 16 bits with saturation: 8-bit weights overflow."""
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert int8.weight_levels() == 127
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN capped below VNNI, as when AVX2 is forced
    assert int8.weight_levels() == 63
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
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


def test_lora_layers_take_their_input_gradients_in_int8_and_their_forward_in_fp32(monkeypatch):
    reference = lora_model()
    use_fused_lora(reference)
    quantized = copy.deepcopy(reference)
    assert use_int8_gradients(quantized) == 14 and use_int8_gradients(quantized) == 14  # safe to call again
    assert all(getattr(m.base_layer, INT8_GRADIENTS) for m in quantized.modules() if hasattr(m, "lora_A"))

    products = []
    monkeypatch.setattr(torch, "_int_mm", lambda a, b, _mm=torch._int_mm: products.append(a.shape) or _mm(a, b))
    ids = torch.randint(3, 64, (2, 9))
    ref_logits, ref_grads = loss_and_grads(reference, ids)
    assert not products  # a model without int8 copies stays fp32
    with torch.no_grad():
        logits = quantized(input_ids=ids).logits
    assert not products and torch.equal(logits, ref_logits)  # forward: fp32, the same values
    logits, grads = loss_and_grads(quantized, ids)
    assert len(products) == 11  # every base's input gradient but layer 0's q, k, v (their input needs none)
    assert torch.equal(logits, ref_logits)
    for name, grad in ref_grads.items():
        cosine = torch.nn.functional.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


def test_only_layers_of_the_fused_update_are_marked():
    """Dropout (or DoRA, several adapters) sends a layer to PEFT's own forward, where no int8 product runs."""
    with_dropout = lora_model(dropout=0.1)
    assert use_int8_gradients(with_dropout) == 0  # not fused at all
    use_fused_lora(with_dropout)
    assert use_int8_gradients(with_dropout) == 0  # fused, but not plain LoRA


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
    assert recorded["results"]["speedups"]["changed"]["int8_gradients"] == 14
    losses = [r["loss"] for r in log_of(run) if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]


def test_precision_int8_with_the_speed_ups_off_trains_and_says_fp32(tiny_model_dir, small_dataset, tmp_path,
                                                                     monkeypatch, capsys):
    from test_train import tiny_config

    from ecombot.train import train

    monkeypatch.setenv("ECOMBOT_SPEEDUPS", "0")  # no fused LoRA layer to compute the int8 gradients
    run = tmp_path / "off"
    result = train(tiny_config(tiny_model_dir, small_dataset, run, precision="int8", max_steps=2, eval_steps=2))
    assert result.precision == json.loads((run / "run_config.json").read_text())["precision"] == "fp32"
    out = capsys.readouterr().out
    assert "int8 input gradients are off (switched off (ECOMBOT_SPEEDUPS=0)), so this run trains in fp32" in out
    assert "training on cpu in fp32\n" in out  # asked for int8: the CPU is not what made it fp32
    if resolve_precision("auto", "cpu") == "bf16":
        return  # auto picks bf16 on this CPU
    run = tmp_path / "auto"
    result = train(tiny_config(tiny_model_dir, small_dataset, run, precision="auto", max_steps=2, eval_steps=2))
    out = capsys.readouterr().out
    assert result.precision == "fp32" and "int8" not in out  # not asked for: nothing to say of int8
    assert "training on cpu in fp32: this CPU has no native bf16" in out


def test_train_says_its_precision_and_why_a_cpu_runs_without_bf16():
    from ecombot.train.recipe import precision_line

    assert precision_line("cpu", "bf16", "auto") == "training on cpu in bf16"
    assert precision_line("cuda", "fp32", "auto") == "training on cuda in fp32"
    assert precision_line("cpu", "int8", "auto") == (
        "training on cpu in int8 (fp32 weights, the frozen layers' input gradients in int8): this CPU has no native "
        "bf16 (AVX-512 BF16 or AMX), which trains several times faster")
    assert precision_line("cpu", "fp32", "fp32") == "training on cpu in fp32"  # asked for: nothing to explain
