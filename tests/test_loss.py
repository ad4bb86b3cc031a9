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
