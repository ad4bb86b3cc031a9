"""`ecombot serve --adapter NAME=DIR`: the named adapters one server answers with (chat.factory loads them)."""

from __future__ import annotations

import re
from pathlib import Path

from ecombot.chat.engine import BASE
from ecombot.errors import ConfigError

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
