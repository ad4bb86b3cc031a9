"""Models stage: find or convert the base model, its chat template, device and precision, adapters."""

from ecombot.models.device import cpu_has_native_bf16, pick_device, resolve_precision
from ecombot.models.loading import (LoadedModel, check_adapter_dir, load_base_model, load_for_inference,
                                    load_tokenizer, read_adapter_base, read_run_system_prompt)
from ecombot.models.registry import DEFAULT_MODEL, convert_gguf, ecombot_home, resolve_model
from ecombot.models.template import (Encoded, encode_conversation, encode_prompt, ensure_chat_template, render,
                                     stop_token_ids, with_system)

__all__ = ["DEFAULT_MODEL", "Encoded", "LoadedModel", "check_adapter_dir", "convert_gguf", "cpu_has_native_bf16",
           "ecombot_home", "encode_conversation", "encode_prompt", "ensure_chat_template", "load_base_model",
           "load_for_inference", "load_tokenizer", "pick_device", "read_adapter_base", "read_run_system_prompt",
           "render", "resolve_model", "resolve_precision", "stop_token_ids", "with_system"]
