import torch

from conftest import make_tiny_model
from ecombot.speedups.norm import use_lean_norms


def test_lean_norms_give_gemmas_values_and_gradients():
    torch.manual_seed(0)
    reference = make_tiny_model(vocab_size=64)
    lean = make_tiny_model(vocab_size=64)
    for model in (reference, lean):
        for norm in (m for m in model.modules() if type(m).__name__ == "Gemma3RMSNorm"):
            norm.weight.data = torch.randn_like(norm.weight) * 0.5  # Gemma starts them at 0: make (1 + w) matter
        model.load_state_dict(reference.state_dict())
    assert use_lean_norms(lean) == 2 * 4 + 2 * 2 + 1  # per layer: 4 around attention/MLP + q/k norms; final norm
    ids = torch.randint(3, 64, (2, 9))
    outputs = []
    for model in (reference, lean):
        logits = model(input_ids=ids).logits
        (logits * torch.linspace(-1, 1, 64)).sum().backward()
        outputs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (ref_logits, ref_grads), (lean_logits, lean_grads) = outputs
    assert torch.allclose(lean_logits, ref_logits, atol=1e-5)
    for name, grad in ref_grads.items():
        assert torch.allclose(lean_grads[name], grad, atol=1e-4, rtol=1e-4), name


def test_lean_norm_saves_less_for_backward():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    norm = Gemma3RMSNorm(640)
    x = torch.randn(8, 100, 640, dtype=torch.bfloat16, requires_grad=True)

    def saved_bytes(module):
        sizes = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return sum(sizes.values())

    plain = saved_bytes(norm)
    use_lean_norms(norm)
    lean = saved_bytes(norm)
    assert lean < plain / 3, (lean, plain)
    assert lean <= x.numel() * 2 + 8 * 100 * 4 + 640 * 4  # the bf16 input, one fp32 scale per row, the weight


def test_lean_norm_gradients_pass_gradcheck():
    from ecombot.speedups.norm import GemmaRMSNorm

    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: GemmaRMSNorm.apply(x, w, 1e-6, 1.0 + w.detach()), (x, weight))


def test_frozen_norm_gain_is_computed_once_and_follows_weight_changes():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from ecombot.speedups.norm import gain_of

    norm = Gemma3RMSNorm(16)
    norm.weight.requires_grad_(False)
    use_lean_norms(norm)
    x = torch.randn(2, 3, 16)
    first = gain_of(norm, torch.float32)
    assert gain_of(norm, torch.float32) is first and torch.equal(first, 1.0 + norm.weight)
    with torch.no_grad():
        norm.weight.add_(0.5)  # an optimizer-style in-place update bumps the version: a new gain
    assert torch.equal(gain_of(norm, torch.float32), 1.0 + norm.weight)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * (1.0 + norm.weight)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    norm.weight.requires_grad_(True)  # trained norms (modules_to_save): computed per call, gradient flows
    norm(x).sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
