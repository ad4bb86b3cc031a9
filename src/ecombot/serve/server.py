"""Load the engine for `ecombot serve`: one base model with its named adapters (the CLI then runs the app)."""

from __future__ import annotations

import re
from pathlib import Path

from ecombot.chat.engine import BASE, Decoding, TransformersEngine
from ecombot.config import BUILTIN_SYSTEM_PROMPT
from ecombot.errors import ConfigError, ModelError

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_adapters(specs: list[str]) -> list[tuple[str, Path]]:
    """`["support=runs/a", "runs/b"]` -> [("support", runs/a), ("b", runs/b)]: NAME=DIR, or DIR named after itself."""
    adapters: list[tuple[str, Path]] = []
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).resolve().name, "", spec)
        if not ADAPTER_NAME.match(name) or name == BASE:
            raise ConfigError(f"--adapter {spec!r}: the name must be 1-64 letters, digits, '.', '_' or '-' and not {BASE!r}")
        if name in {n for n, _ in adapters}:
            raise ConfigError(f"--adapter {spec!r}: the name {name!r} is used twice")
        adapters.append((name, Path(path)))
    return adapters


def build_engine(model: str | None, adapters: list[tuple[str, Path]], decoding: Decoding | None = None,
                 precision: str = "auto", decode_bits: int = 16) -> TransformersEngine:
    """One base model in memory with every adapter loaded by name; each answers with its run's system prompt,
    the base model with the store prompt."""
    from ecombot.models import load_for_inference, resolve_model
    from ecombot.run_dir import RunDir

    first_name, first_dir = adapters[0] if adapters else ("default", None)
    loaded = load_for_inference(model=model, adapter=first_dir, precision=precision, adapter_name=first_name)
    engine = TransformersEngine(loaded, BUILTIN_SYSTEM_PROMPT, decoding)
    for name, path in adapters[1:]:
        run = RunDir(path)
        run.check_adapter()
        if model is None and resolve_model(run.base_model()) != loaded.model_dir:
            raise ModelError(f"{path}: adapter {name!r} was trained on {run.base_model()}, not on the "
                             f"base model of {first_dir} ({loaded.model_dir}); serve them from separate servers")
        engine.add_adapter(name, path)
    engine.speed_up_decoding(decode_bits)
    return engine
