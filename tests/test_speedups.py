"""speedups.apply: what it changes on a model, that one switch turns all of it off, and that either way a training
run learns the same thing."""

import json

import pytest
import torch

from conftest import make_tiny_model
from ecombot import speedups
from ecombot.speedups import kernels, lowbit
from ecombot.models import PackedCollator
from ecombot.models.loss import supervised_loss
from ecombot.train.packing import packed_rows
from test_packing import examples
from test_train import tiny_config


def tiny_lora_model():
    from peft import LoraConfig, get_peft_model

    model = make_tiny_model(vocab_size=64)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def patched(model) -> int:
    """Modules whose forward was replaced on the instance (a speed-up), not taken from their class."""
    return sum("forward" in vars(module) for module in model.modules())


def test_train_mode_says_what_it_changed_and_records_it_on_the_model():
    model = tiny_lora_model()
    applied = speedups.apply(model, mode="train")
    # 2 layers: 7 LoRA projections each; norms: 4 per layer + q/k norms + the final one; one gated MLP per layer
    assert applied.changed == {"attention": 1, "fused_head": 1, "lora": 14, "lora_bf16_inputs": 0, "norms": 13,
                               "mlp": 2}
    assert applied.off is None and speedups.applied_to(model) is applied
    assert patched(model) == 14 + 13 + 2
    assert applied.to_dict()["cpu_kernels"] == kernels.status()  # an fp32 CPU model uses the fp32 C kernels


@pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])
def test_decode_mode_gives_an_fp32_model_low_bit_steps_only_where_they_pay(monkeypatch, avx512):
    monkeypatch.setattr(lowbit, "fp32_pays", lambda: avx512)
    model = make_tiny_model(vocab_size=64).eval()
    applied = speedups.apply(model, mode="decode", low_bit=8)
    low_bit = {"low_bit": 2 * 7 + 1} if avx512 else {}  # 2 layers x 7 projections + the head
    assert applied.changed == {"attention": 1, "fused_head": 1, "flat_head": 1, **low_bit}
    head = model.get_output_embeddings()
    assert isinstance(head, lowbit.LowBitDecodeLinear) if avx512 else "forward" in vars(head)
    if avx512:  # an fp32 model's batched steps of a few rows use the kernels too, the head's up to 16
        body = {m.most_rows for m in model.modules() if isinstance(m, lowbit.LowBitDecodeLinear) and m is not head}
        assert body == {lowbit.FP32_LOW_BIT_ROWS} and head.most_rows == lowbit.FP32_HEAD_LOW_BIT_ROWS == 16
    with pytest.raises(ValueError, match="mode"):
        speedups.apply(model, mode="fast")


def test_one_switch_turns_every_speedup_off_and_the_loss_is_the_same(monkeypatch):
    exs = examples([9, 14, 5, 11, 7])
    batch = PackedCollator(0, 32)(packed_rows(exs, 32))
    losses = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("ECOMBOT_SPEEDUPS", switch)
        torch.manual_seed(0)
        model = tiny_lora_model()
        applied = speedups.apply(model, mode="train")
        if switch == "0":
            assert applied.off == "switched off (ECOMBOT_SPEEDUPS=0)" and not applied.changed
            assert patched(model) == 0 and speedups.applied_to(model) is None
        loss = supervised_loss(model, batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        losses[switch] = (loss.detach(), grads)
    (fast, fast_grads), (plain, plain_grads) = losses["1"], losses["0"]
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(fast_grads, plain_grads, atol=1e-5)


def test_a_run_records_its_speedups_and_trains_the_same_without_them(tiny_model_dir, small_dataset, tmp_path,
                                                                      monkeypatch):
    from ecombot.train import train

    runs = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("ECOMBOT_SPEEDUPS", switch)
        run = tmp_path / f"run{switch}"
        train(tiny_config(tiny_model_dir, small_dataset, run, max_steps=6, eval_steps=3), show_progress=False)
        runs[switch] = json.loads((run / "run_config.json").read_text())["results"]
    assert runs["1"]["speedups"]["changed"]["lora"] == 2 * 7  # the tiny model: 2 layers x 7 projections
    assert runs["0"]["speedups"] == {"mode": "train", "changed": {}, "cpu_kernels": "not used",
                                     "off": "switched off (ECOMBOT_SPEEDUPS=0)"}
    assert runs["1"]["best_val_loss"] == pytest.approx(runs["0"]["best_val_loss"], rel=1e-4)


@pytest.mark.parametrize("rows", [1, 3])
def test_the_decode_head_projects_generates_last_positions_without_copying_its_weight(rows):
    """generate hands the head each prompt's last position (a strided 3-D view); PyTorch's own bf16 linear with a
    frozen weight turns that into a bmm over a copy of the whole weight (2.4 s per prompt for Gemma's head)."""
    from torch.profiler import ProfilerActivity, profile

    model = tiny_lora_model().to(torch.bfloat16).eval()
    head = model.get_output_embeddings()
    last = torch.randn(rows, 5, 64, dtype=torch.bfloat16)[:, -1:, :]
    expected = torch.nn.functional.linear(last.reshape(rows, 64), head.weight).view(rows, 1, -1)

    def ops() -> tuple[set[str], torch.Tensor]:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            out = head(last)
        return {event.name for event in prof.events()}, out

    before, _ = ops()
    assert not head.weight.requires_grad and "aten::bmm" in before  # the slow path this guards against
    speedups.apply(model, mode="decode")
    after, out = ops()
    assert "aten::bmm" not in after and torch.equal(out, expected)


@pytest.mark.parametrize("flags, rows, weight_major", [
    ({"avx2"}, 1, False), ({"avx2"}, 2, True), ({"avx2"}, 16, True), ({"avx2"}, 64, True), ({"avx2"}, 65, False),
    ({"avx2", "avx512_bf16"}, 4, False), ({"avx2", "avx512_bf16"}, 8, True), ({"avx2", "avx512_bf16"}, 32, False),
    ({"avx2", "avx512f"}, 8, False), (set(), 8, False)])
def test_a_few_fp32_rows_go_through_the_head_weight_major_with_the_same_values(monkeypatch, flags, rows, weight_major):
    """`W @ xᵀ` for the few rows of a batched decoding step on the CPUs where it measured faster (up to 4x on an AVX2
    EPYC), F.linear elsewhere."""
    from ecombot.speedups import cpu
    from ecombot.speedups.head import linear_rows

    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    weight, bias = torch.randn(300, 32), torch.randn(300)
    last = torch.randn(rows, 3, 32)[:, -1:, :]  # generate's last positions: a strided 3-D view
    for b in (None, bias):
        out = linear_rows(last, weight, b)
        assert out.shape == (rows, 1, 300)
        assert (out.stride(-1) == rows and rows > 1) == weight_major  # the weight-major product, transposed
        assert torch.allclose(out, torch.nn.functional.linear(last, weight, b), atol=1e-5)
    assert linear_rows(last.to(torch.bfloat16), weight.to(torch.bfloat16)).is_contiguous()  # bf16: unchanged


def test_the_weight_major_head_keeps_every_position_of_a_longer_input(monkeypatch):
    from ecombot.speedups import cpu
    from ecombot.speedups.head import linear_rows

    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2"})
    x, weight = torch.randn(2, 3, 32), torch.randn(300, 32)
    out = linear_rows(x, weight)  # 6 rows, weight-major
    assert out.shape == (2, 3, 300) and out.stride(-1) == 6
    assert torch.allclose(out, torch.nn.functional.linear(x, weight), atol=1e-5)
