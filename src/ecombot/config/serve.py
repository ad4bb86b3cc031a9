"""Serving configuration: what `ecombot serve` lets an operator set (the CLI flags fill it in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ecombot.errors import ConfigError


@dataclass
class ServeConfig:
    model_name: str = "gemma-3-270m"  # what /v1/models calls the base model (also accepted as `model`)
    api_keys: list[str] = field(default_factory=list)  # empty (and no review keys): no key needed
    review_keys: list[str] = field(default_factory=list)  # API keys that may also approve suggestions for training
    cors_origins: list[str] = field(default_factory=list)  # empty: CORS off
    web: bool = True  # serve the chat page at / (and issue its session tokens)
    session_secret_file: Path | None = None  # signs page sessions; None: a new secret each start (sessions end)
    max_request_bytes: int = 64 * 1024
    max_messages: int = 64
    max_tokens: int = 512  # the largest `max_tokens` a request may ask for
    default_max_tokens: int | None = None  # None: the engine's decoding default, at most `max_tokens`
    rate_limit_per_minute: int = 60  # per API key, else per client address (page sessions and open access); 0 = off
    max_batch: int = 8
    max_queue: int = 64
    reload_every_s: float = 5.0  # how often serve checks for a version `ecombot learn` promoted; 0 = never

    def __post_init__(self):
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens:
            raise ConfigError(f"--default-max-tokens {self.default_max_tokens} is above --max-tokens "
                              f"{self.max_tokens}: every request that does not set max_tokens would be refused; "
                              "lower the first or raise the second")
