"""Who is calling: API keys (Bearer), signed web-session tokens, and a per-client rate limit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass


def fingerprint(secret: str) -> str:
    """A stable, non-reversible client id for a key (stored instead of the key itself)."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass
class Caller:
    client: str  # rate-limit and ownership identity
    channel: str  # "api" (API key or open access) or "web" (chat page session)


class SessionTokens:
    """Stateless tokens for the chat page: `<session id>.<expiry>.<HMAC>`, signed with a per-server secret.

    The page must work for customers who have no API key, so it gets a short-lived token that is only good
    for chatting, feedback and handoff within its own session's conversations.
    """

    def __init__(self, secret: bytes | None = None, lifetime_s: int = 12 * 3600):
        self.secret = secret or secrets.token_bytes(32)
        self.lifetime_s = lifetime_s

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self) -> tuple[str, int]:
        expires = int(time.time()) + self.lifetime_s
        payload = f"web-{secrets.token_hex(8)}.{expires}"
        return f"{payload}.{self._sign(payload)}", expires

    def verify(self, token: str) -> str | None:
        """The session id of a valid, unexpired token, else None."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        payload = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign(payload), parts[2]) or int(parts[1]) < time.time():
            return None
        return parts[0]


class RateLimiter:
    """Token bucket per client: `per_minute` requests a minute on average, bursts up to `per_minute`."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def check(self, client: str) -> float:
        """0 when the request may go ahead, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            now = time.monotonic()
            if len(self.buckets) > 10_000:  # forget clients whose bucket has refilled: memory stays bounded
                full_after = self.capacity / self.rate
                self.buckets = {c: (t, at) for c, (t, at) in self.buckets.items() if now - at < full_after}
            tokens, last = self.buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.buckets[client] = (tokens - 1, now)
                return 0.0
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
