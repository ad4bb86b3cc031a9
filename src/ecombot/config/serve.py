"""Serving configuration: what `ecombot serve` lets an operator set (the CLI flags fill it in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeConfig:
    model_name: str = "gemma-3-270m"  # what /v1/models calls the base model (also accepted as `model`)
    api_keys: list[str] = field(default_factory=list)  # empty: no key needed
    cors_origins: list[str] = field(default_factory=list)  # empty: CORS off
    web: bool = True  # serve the chat page at / (and issue its session tokens)
    max_request_bytes: int = 64 * 1024
    max_messages: int = 64
    max_tokens: int = 512  # the largest `max_tokens` a request may ask for
    default_max_tokens: int | None = None  # None: the engine's decoding default
    rate_limit_per_minute: int = 60  # per client (API key, web session or IP); 0 = off
    max_batch: int = 8
    max_queue: int = 64
