"""Models stage: find or convert the base model, its chat template, device and precision, adapters, and what a
model is scored on (answer tokens only, models/loss.py)."""

from ecombot.models.device import cpu_has_native_bf16, one_parallel_thread, pick_device, resolve_precision
from ecombot.models.encoding import (ANSWER_TOKENS_CAP, CHAT_ANSWER_TOKENS, EncodedSet, PackedCollator, PadCollator,
                                    answer_token_counts, answer_token_limit, encode_conversations)
from ecombot.models.loading import (LoadedModel, adapter_display_name, base_model_spec, load_adapter_base,
                                   load_base_model, load_for_inference, load_tokenizer, peft_adapter_name)
from ecombot.models.loss import batch_tokens, scoring_batch, supervised_loss, supervised_positions, token_losses
from ecombot.models.registry import DEFAULT_MODEL, convert_gguf, ecombot_home, resolve_model
from ecombot.models.template import (Encoded, encode_conversation, encode_prompt, ensure_chat_template, render,
                                     stop_token_ids, with_system)
from ecombot.models.vocab import answer_cross_entropy, never_output, never_output_in

__all__ = ["ANSWER_TOKENS_CAP", "CHAT_ANSWER_TOKENS", "DEFAULT_MODEL", "adapter_display_name", "answer_cross_entropy",
           "answer_token_counts", "answer_token_limit", "base_model_spec", "batch_tokens", "convert_gguf",
           "cpu_has_native_bf16", "ecombot_home", "encode_conversation", "encode_conversations", "encode_prompt",
           "Encoded", "EncodedSet", "ensure_chat_template", "load_adapter_base", "load_base_model",
           "load_for_inference", "load_tokenizer", "LoadedModel", "never_output", "never_output_in",
           "one_parallel_thread", "PackedCollator", "PadCollator", "peft_adapter_name", "pick_device", "render",
           "resolve_model", "resolve_precision", "scoring_batch", "stop_token_ids", "supervised_loss",
           "supervised_positions", "token_losses", "with_system"]
