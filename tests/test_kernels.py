"""Fused CPU kernels (ecombot/speedups/kernels), bf16 and fp32: the same values as PyTorch's ops up to rounding, built
once and cached, sharing PyTorch's OpenMP runtime, and PyTorch's ops whenever the kernels cannot be built."""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from ecombot.speedups import kernels
from ecombot.speedups.head import head_cross_entropy_rows
from ecombot.speedups.mlp import use_fused_mlp
from ecombot.speedups.norm import GemmaRMSNorm, use_lean_norms

BF16_STEP = 2.0 ** -7  # relative spacing of bf16 numbers: results may differ by one rounding step
# a relative difference allowed per storage type: one bf16 rounding step; for fp32, a summation order or an exp routine
STEP = {torch.bfloat16: BF16_STEP, torch.float32: 2.0 ** -17}
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])


@pytest.fixture
def fresh_library(tmp_path, monkeypatch):
    """The kernels built from scratch into an empty ECOMBOT_HOME (and the cached library restored afterwards)."""
    monkeypatch.setenv("ECOMBOT_HOME", str(tmp_path / "home"))
    kernels.library.cache_clear()
    yield tmp_path / "home" / "kernels"
    kernels.library.cache_clear()


def require_built() -> None:
    if kernels.library() is None:
        if os.environ.get("ECOMBOT_REQUIRE_SYSTEM_TESTS") == "1" or kernels._compiler() is not None:
            pytest.fail(f"fused CPU kernels unavailable: {kernels.status()}")
        pytest.skip("no C compiler on this machine: the kernels' fallback is tested below")


@pytest.fixture
def built():
    require_built()


def close_in_bf16(ours: torch.Tensor, reference: torch.Tensor, atol: float = 1e-6, step: float = BF16_STEP) -> bool:
    """Equal up to one rounding step of the reference (different summation order or exp/tanh routine)."""
    ours, reference = ours.double(), reference.double()
    return bool(((ours - reference).abs() <= reference.abs() * step + atol).all())


def eager(monkeypatch):
    monkeypatch.setattr(kernels, "usable", lambda *tensors: False)


def test_kernels_are_built_once_cached_and_share_pytorchs_openmp_runtime(fresh_library):
    def openmp_runtimes() -> set[str]:
        return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}

    before = openmp_runtimes()
    require_built()
    (library,) = fresh_library.glob("*/fused_cpu.so")
    built_at = library.stat().st_mtime_ns
    kernels.library.cache_clear()
    assert kernels.status() == "on" and library.stat().st_mtime_ns == built_at  # loaded from the cache
    assert openmp_runtimes() == before  # PyTorch's OpenMP runtime, not a second pool of threads
    torch_runtime = kernels._loaded_openmp_runtime()
    assert torch_runtime is not None and torch_runtime.parent == Path(torch.__file__).resolve().parent / "lib"


@DTYPES
@pytest.mark.parametrize("shape,transposed", [((3, 37, 64), False), ((2, 5, 3, 32), True)], ids=["rows", "heads"])
def test_norm_kernel_matches_pytorch_ops(monkeypatch, built, shape, transposed, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).to(dtype)
    if transposed:  # Gemma's q/k norms see (batch, heads, tokens, head_dim) views of (batch, tokens, heads, ...)
        x = x.transpose(1, 2)
    gain = 1 + torch.randn(shape[-1]) * 0.3
    grad = torch.randn(x.shape).to(dtype)
    results, calls = [], []
    monkeypatch.setattr(kernels, "rms_norm_backward", lambda *a, _f=kernels.rms_norm_backward: calls.append(1) or _f(*a))
    for use_kernels in (True, False):
        if not use_kernels:
            eager(monkeypatch)
        leaf = x.detach().clone().requires_grad_()
        out = GemmaRMSNorm.apply(leaf, gain - 1, 1e-6, gain)
        out.backward(grad)
        results.append((out.detach(), leaf.grad))
    (out, grad_x), (ref_out, ref_grad_x) = results
    assert calls == [1] and out.dtype == grad_x.dtype == dtype and out.shape == x.shape
    assert close_in_bf16(out, ref_out, step=STEP[dtype]) and close_in_bf16(grad_x, ref_grad_x, 1e-3, STEP[dtype])
    assert (out == ref_out).float().mean() > (0.99 if dtype == torch.bfloat16 else 0.5)  # mostly bit-identical


@DTYPES
def test_gelu_mul_kernel_is_as_accurate_as_pytorchs_ops(built, dtype):
    torch.manual_seed(0)
    gate = (torch.randn(4, 3000) * 3).to(dtype)
    gate[0, :4] = torch.tensor([0.0, -20.0, 20.0, 1e-3])  # GELU's flat, steep and saturated parts
    up, grad = torch.randn(4, 3000).to(dtype), torch.randn(4, 3000).to(dtype)
    exact_gate, exact_up = gate.double().requires_grad_(), up.double().requires_grad_()
    exact = F.gelu(exact_gate, approximate="tanh") * exact_up
    exact.backward(grad.double())
    pytorch = F.gelu(gate.float(), approximate="tanh").to(dtype) * up  # what the model computes eagerly
    out = kernels.gelu_mul_forward(gate, up)
    grad_gate, grad_up = kernels.gelu_mul_backward(grad, gate, up)
    assert out.dtype == grad_gate.dtype == grad_up.dtype == dtype
    step = STEP[dtype]
    assert close_in_bf16(out, exact, step=step) and close_in_bf16(grad_up, exact_up.grad, step=step)
    # grad_gate: the product of three rounded numbers
    assert close_in_bf16(grad_gate, exact_gate.grad, atol=1e-2 if dtype == torch.bfloat16 else 1e-5, step=step)
    if dtype == torch.bfloat16:  # in fp32 both are within a few fp32 steps of the exact values
        assert (out.double() - exact).abs().max() <= (pytorch.double() - exact).abs().max()
    # far on GELU's negative side exact zeros, as PyTorch's: values near 1e-37 would make the next matrix product's
    # products denormal (~100x slower on x86)
    far = torch.tensor([[-10.0, -20.0, -100.0, -9.5]], dtype=dtype)
    ones = torch.ones_like(far)
    assert (kernels.gelu_mul_forward(far, ones) == 0).all()
    assert all((g == 0).all() for g in kernels.gelu_mul_backward(ones, far, ones))


@DTYPES
@pytest.mark.parametrize("chunk", [96, 1000], ids=["chunks", "one-chunk"])
def test_head_softmax_kernel_gives_pytorchs_loss_and_gradient(monkeypatch, built, chunk, dtype):
    torch.manual_seed(0)
    hidden = torch.randn(37, 64).to(dtype)
    weight = (torch.randn(1000, 64) * 0.3).to(dtype)  # 1000 columns: the last chunk is partial
    calls = []
    monkeypatch.setattr(kernels, "softmax_chunk", lambda *a, _f=kernels.softmax_chunk: calls.append(1) or _f(*a))
    targets = torch.randint(0, 1000, (37,))
    grads = [torch.empty_like(hidden), torch.empty_like(hidden)]
    losses = [head_cross_entropy_rows(hidden, weight, targets, chunk, grads[0])]
    eager(monkeypatch)
    losses.append(head_cross_entropy_rows(hidden, weight, targets, chunk, grads[1]))
    assert len(calls) == -(-1000 // chunk)  # the kernel ran on every chunk, then PyTorch's ops
    assert torch.allclose(losses[0], losses[1], atol=2e-5, rtol=0)
    assert ((grads[0].float() - grads[1].float()).norm() / grads[1].float().norm()) < 1e-3
    exact = F.cross_entropy(hidden.double() @ weight.double().t(), targets, reduction="none")
    assert (losses[0].double() - exact).abs().max() < 0.02  # bf16 logits, as the model's own head gives them
    logits = torch.tensor([[0.0, -63.0, -65.0, -200.0]], dtype=dtype)  # far below the maximum: exact zeros
    probs, top, total, rescale = torch.empty_like(logits), torch.full((1, 1), float("-inf")), torch.zeros(1, 1), \
        torch.empty(1, 1)
    kernels.softmax_chunk(logits, probs, top, total, rescale)
    assert probs[0, 1] > 0 and (probs[0, 2:] == 0).all() and total.item() == pytest.approx(1.0)


@DTYPES
def test_a_model_with_the_kernels_trains_like_pytorchs_ops(monkeypatch, built, dtype):
    """Norms and the MLP activation through the kernels: the logits and every gradient of a tiny Gemma."""
    torch.manual_seed(0)
    model = make_tiny_model(vocab_size=64).to(dtype)
    for norm in (m for m in model.modules() if type(m).__name__ == "Gemma3RMSNorm"):
        norm.weight.data.normal_(0, 0.5)
    for param in model.parameters():
        param.requires_grad_(param.dim() == 2)  # matrices train; the norms stay frozen, as under LoRA
    assert use_lean_norms(model) == 13 and use_fused_mlp(model) == 2
    ids = torch.randint(3, 64, (2, 11))
    calls = []
    monkeypatch.setattr(kernels, "gelu_mul_backward", lambda *a, _f=kernels.gelu_mul_backward: calls.append(1) or _f(*a))
    results = []
    for use_kernels in (True, False):
        if not use_kernels:
            eager(monkeypatch)
        model.zero_grad()
        logits = model(input_ids=ids).logits.float()
        (logits * torch.linspace(-1, 1, 64)).sum().backward()
        results.append((logits.detach(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}))
    assert calls == [1, 1]  # the kernels ran (once per layer), then PyTorch's ops
    (logits, grads), (ref_logits, ref_grads) = results
    tolerance = {torch.bfloat16: (2e-2, 5e-2), torch.float32: (1e-5, 1e-4)}[dtype]
    assert (logits - ref_logits).norm() / ref_logits.norm() < tolerance[0]
    assert set(grads) == set(ref_grads) and grads
    for name, grad in ref_grads.items():
        assert (grads[name] - grad).norm() / grad.norm() < tolerance[1], name


def test_only_tanh_gelu_mlps_are_fused():
    model = make_tiny_model(vocab_size=64)
    model.config.hidden_activation = "relu"  # the MLPs keep a reference to this config
    assert use_fused_mlp(model) == 0


@pytest.mark.parametrize("setting,reason", [({"CC": "/nonexistent/cc"}, "build failed"),
                                            ({"ECOMBOT_CPU_KERNELS": "0"}, "switched off")], ids=["no-compiler", "off"])
def test_without_the_kernels_pytorchs_ops_run(fresh_library, monkeypatch, setting, reason):
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert kernels.status().startswith(f"off: {reason}")
    x = torch.randn(2, 5, 16).to(torch.bfloat16).requires_grad_()
    assert not kernels.usable(x)
    gain = 1 + torch.randn(16) * 0.3
    GemmaRMSNorm.apply(x, gain - 1, 1e-6, gain).sum().backward()  # PyTorch's ops
    assert x.grad.shape == x.shape and not list(fresh_library.glob("*/fused_cpu.so"))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_on_a_cpu_uses_the_kernels(tiny_model_dir, small_dataset, tmp_path, built, monkeypatch, precision):
    import json

    from ecombot.config import load_config
    from ecombot.train import train

    calls = []
    monkeypatch.setattr(kernels, "gelu_mul_forward", lambda *a, _f=kernels.gelu_mul_forward: calls.append(1) or _f(*a))
    cfg = load_config(None, model=str(tiny_model_dir), data=str(small_dataset), output=str(tmp_path / "run"),
                      max_steps=16, eval_steps=8, logging_steps=1, batch_size=4, learning_rate=1e-2,
                      precision=precision, early_stopping_patience=0, warmup_ratio=0.0)
    result = train(cfg, show_progress=False)
    assert result.cpu_kernels == "on" and result.precision == precision and len(calls) >= 16  # every step's MLPs
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
              if "\"loss\"" in line]
    assert len(losses) == 16 and losses[-1] < losses[0] * 0.8  # it learns


def test_the_kernel_sources_are_shipped_with_the_package():
    """A wheel holds only the package data pyproject names: a source the build reads but the wheel lacks would turn
    the kernels off silently on every installed (not editable) copy."""
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["ecombot.speedups.kernels"]
    for source in (kernels.SOURCE, kernels.KERNELS):
        assert source.is_file() and any(fnmatch.fnmatch(source.name, pattern) for pattern in shipped), source.name
