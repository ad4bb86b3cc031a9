"""Chat templates and the token-level loss mask.

One template renders a conversation everywhere (training, chat, serving, export), so the model is
asked questions in exactly the format it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecombot.errors import ModelError

# Gemma's turn format. Gemma has no system role: the system prompt opens the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' + (prefix if loop.first else '')"
    " + (m['content'] | trim) + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Fallback for models whose tokenizer has no template and which are not Gemma: plain role markers,
# each assistant turn closed by the tokenizer's EOS token so the model learns to stop.
FALLBACK_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\n' + (m['content'] | trim) }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer, model_type: str | None) -> str:
    """Give the tokenizer a template when it has none; returns which one it uses ('own', 'gemma', 'fallback')."""
    if tokenizer.chat_template:
        return "own"
    if model_type and model_type.startswith("gemma"):
        tokenizer.chat_template = GEMMA_TEMPLATE
        return "gemma"
    tokenizer.chat_template = FALLBACK_TEMPLATE
    return "fallback"


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Prepend the store's system prompt unless the conversation brings its own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the end-of-turn token where the vocabulary has one (Gemma's <end_of_turn>, ChatML's <|im_end|>)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(ids)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 where the loss is masked
    truncated: bool


def assistant_char_spans(tokenizer, messages: list[dict[str, str]], supervise_from: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans the model must learn: each assistant turn's text and the
    token(s) that close it (e.g. `<end_of_turn>`), without the whitespace after them. Assistant turns
    before message index `supervise_from` (few-shot examples in an evaluation prompt) are context only.

    Works for any template that renders a conversation as an extension of its prefixes; a template
    that rewrites earlier turns (some reasoning templates do) is refused rather than mis-masked.
    """
    full = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < supervise_from:
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise ModelError("the chat template does not render conversations incrementally; "
                             "cannot tell assistant tokens from prompt tokens")
        turn = upto[len(prefix):]
        spans.append((len(prefix), len(prefix) + len(turn.rstrip())))
    return full, spans


def encode_conversation(tokenizer, messages: list[dict[str, str]], max_length: int, supervise_from: int = 0,
                        keep_end: bool = False) -> Encoded:
    """Token ids and labels: loss only on assistant turns, including their end-of-turn token. Longer than
    `max_length`: cut at the end (training: what is cut is not trained on), or with `keep_end` cut after the first
    token (BOS) so the last answer is kept, whole unless it alone is longer (scoring: a long grounded prompt loses
    its oldest tokens, not the answer it is scored on)."""
    text, spans = assistant_char_spans(tokenizer, messages, supervise_from)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"]):
        supervised = any(a <= start < b for a, b in spans)
        labels.append(token_id if supervised else -100)
    ids = enc["input_ids"]
    truncated = len(ids) > max_length
    if truncated and keep_end:
        kept = slice(len(ids) - max_length + 1, None)
        return Encoded(ids[:1] + ids[kept], [-100] + labels[kept], truncated)
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the assistant's turn opener, ready to generate from."""
    return tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
