"""One factory for every engine: which base model answers, which adapters load over it, and on which runtime.

chat, serve and evaluate all build their engine here, so the base-model rule (`models.base_model_spec`), the check
that every adapter shares that base, and each runtime's set-up are written once.
"""

from __future__ import annotations

from pathlib import Path

from ecombot.chat.engine import Decoding, PromptingEngine, TransformersEngine
from ecombot.config import BUILTIN_SYSTEM_PROMPT
from ecombot.errors import ConfigError, ModelError
from ecombot.run_dir import RunDir

ENGINES = ("transformers", "llama.cpp")


def open_engine(model: str | None, adapters: list[tuple[str, Path]], decoding: Decoding | None = None, *,
                system_prompt: str | None = BUILTIN_SYSTEM_PROMPT, engine: str = "transformers",
                decode_bits: int = 16, precision: str = "auto", max_batch: int = 8) -> PromptingEngine:
    """The base model (`--model`, else the first adapter's base, else the default) with every (name, run) adapter
    loaded by name, the first one answering by default; the base model is told `system_prompt`, each adapter its
    run's. `decode_bits` and `precision` are the PyTorch engine's; `max_batch` the llama.cpp engine's sequences per
    decode."""
    from ecombot.models import base_model_spec, resolve_model

    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    model_dir = resolve_model(base_model_spec(model, adapters[0][1] if adapters else None))
    for name, path in adapters[1:]:
        run = RunDir(path)
        run.check_adapter()
        if model is None and resolve_model(run.base_model()) != model_dir:
            raise ModelError(f"{path}: adapter {name!r} was trained on {run.base_model()}, not on the base model of "
                             f"{adapters[0][1]} ({model_dir}); serve them from separate servers")
    if engine == "llama.cpp":
        return _llama_cpp_engine(model_dir, adapters, system_prompt, decoding, max_batch)
    return _transformers_engine(str(model_dir), adapters, system_prompt, decoding, decode_bits, precision)


def _transformers_engine(model_dir: str, adapters, system_prompt, decoding, decode_bits, precision):
    from ecombot.models import load_for_inference

    first_name, first_dir = adapters[0] if adapters else ("default", None)
    loaded = load_for_inference(model=model_dir, adapter=first_dir, precision=precision, adapter_name=first_name)
    engine = TransformersEngine(loaded, system_prompt, decoding)
    for name, path in adapters[1:]:
        engine.add_adapter(name, path)
    engine.speed_up_decoding(decode_bits)
    return engine


def _llama_cpp_engine(model_dir: Path, adapters, system_prompt, decoding, max_batch):
    from ecombot.chat.llama_cpp_engine import LlamaCppEngine
    from ecombot.models import llama_cpp, load_tokenizer

    llama_cpp.bindings()  # the missing extra is named before anything slow happens
    engine = LlamaCppEngine(model_dir, load_tokenizer(model_dir), llama_cpp.runnable_base(model_dir), system_prompt,
                            decoding, max_batch=max_batch)
    for name, path in adapters:
        engine.add_adapter(name, path)
    return engine
