import pytest

from ecombot.models.template import (FALLBACK_TEMPLATE, GEMMA_TEMPLATE, encode_conversation, encode_prompt,
                                     ensure_chat_template, render, stop_token_ids, with_system)

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Check the Orders page."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You are welcome!"}]


def test_gemma_template_puts_system_in_first_user_turn(tiny_tokenizer):
    assert tiny_tokenizer.chat_template == GEMMA_TEMPLATE
    assert render(tiny_tokenizer, CONV) == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhere is my order?<end_of_turn>\n"
        "<start_of_turn>model\nCheck the Orders page.<end_of_turn>\n"
        "<start_of_turn>user\nThanks<end_of_turn>\n"
        "<start_of_turn>model\nYou are welcome!<end_of_turn>\n")
    assert render(tiny_tokenizer, CONV[:2], add_generation_prompt=True).endswith(
        "Where is my order?<end_of_turn>\n<start_of_turn>model\n")


def test_mask_covers_exactly_the_answers_and_their_end_of_turn(tiny_tokenizer):
    enc = encode_conversation(tiny_tokenizer, CONV, max_length=512)
    assert enc.input_ids == tiny_tokenizer(render(tiny_tokenizer, CONV), add_special_tokens=False)["input_ids"]
    eot = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    supervised = [t for t, label in zip(enc.input_ids, enc.labels) if label != -100]
    assert all(label in (-100, t) for t, label in zip(enc.input_ids, enc.labels))
    expected = (tiny_tokenizer("Check the Orders page.", add_special_tokens=False)["input_ids"] + [eot]
                + tiny_tokenizer("You are welcome!", add_special_tokens=False)["input_ids"] + [eot])
    assert supervised == expected
    # token by token: every supervised token is inside an assistant turn; the newline after <end_of_turn>,
    # the turn markers, the system prompt and the user turns are all masked
    tokens = tiny_tokenizer.convert_ids_to_tokens(enc.input_ids)
    masked_text = tiny_tokenizer.convert_tokens_to_string([t for t, l in zip(tokens, enc.labels) if l == -100])
    for part in ("Be brief.", "Where is my order?", "Thanks", "<start_of_turn>model"):
        assert part in masked_text
    assert enc.labels[enc.input_ids.index(eot)] == -100  # the user's <end_of_turn> is not learned
    assert enc.labels[-1] == -100 and enc.labels[-2] == eot  # trailing newline masked, model's <end_of_turn> learned


def test_truncation_is_reported(tiny_tokenizer):
    enc = encode_conversation(tiny_tokenizer, CONV, max_length=10)
    assert enc.truncated and len(enc.input_ids) == len(enc.labels) == 10
    assert not encode_conversation(tiny_tokenizer, CONV, max_length=512).truncated


def test_scoring_cuts_an_over_long_conversation_before_its_answer_not_through_it(tiny_tokenizer):
    """`keep_end`: the first token (BOS) and the last max_length - 1, so the last answer is scored whole; the default
    cut at max_length leaves none of it."""
    long_prompt = [{"role": "user", "content": "Where is my order? " * 60},
                   {"role": "assistant", "content": "On its way."}]
    whole = encode_conversation(tiny_tokenizer, long_prompt, max_length=4096)
    answer = [t for t, label in zip(whole.input_ids, whole.labels) if label != -100]
    limit = len(answer) + 20
    assert len(whole.input_ids) > 3 * limit
    start = encode_conversation(tiny_tokenizer, long_prompt, max_length=limit)
    assert start.truncated and all(label == -100 for label in start.labels)
    end = encode_conversation(tiny_tokenizer, long_prompt, max_length=limit, keep_end=True)
    assert end.truncated and len(end.input_ids) == len(end.labels) == limit
    assert end.input_ids[0] == whole.input_ids[0] and end.input_ids[1:] == whole.input_ids[-(limit - 1):]
    assert [t for t, label in zip(end.input_ids, end.labels) if label != -100] == answer


def test_prompt_ends_with_model_turn_opener(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, CONV[:2])
    text = tiny_tokenizer.decode(ids)
    assert text.endswith("<start_of_turn>model\n") and text.count("<start_of_turn>") == 2


def test_with_system_keeps_an_existing_system_turn():
    assert with_system(CONV[1:3], "Store prompt")[0] == {"role": "system", "content": "Store prompt"}
    assert with_system(CONV, "Store prompt")[0]["content"] == "Be brief."
    assert with_system(CONV[1:3], None) == CONV[1:3]


def test_stop_tokens_include_end_of_turn(tiny_tokenizer):
    assert stop_token_ids(tiny_tokenizer) == sorted({tiny_tokenizer.eos_token_id,
                                                     tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")})


def test_fallback_and_own_templates(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    assert ensure_chat_template(tok, "llama") == "fallback" and tok.chat_template == FALLBACK_TEMPLATE
    enc = encode_conversation(tok, CONV[1:3], 512)
    supervised = [t for t, l in zip(enc.input_ids, enc.labels) if l != -100]
    assert supervised[-1] == tok.eos_token_id  # the model learns to stop with EOS
    assert tok.decode(supervised, skip_special_tokens=True) == "Check the Orders page."
    assert ensure_chat_template(tok, "gemma3_text") == "own"  # an existing template is kept


def test_non_incremental_template_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    from ecombot.errors import ModelError

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # a template that renders only the last turn rewrites history: masks cannot be derived from it
    tok.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(ModelError, match="incrementally"):
        encode_conversation(tok, CONV[1:3], 512)
