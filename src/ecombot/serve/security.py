"""Who is calling: API keys (Bearer, held only as salted hashes), signed chat-page session tokens, rate limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ecombot.errors import ConfigError

REVIEW = "review"  # the role of keys that may also approve customers' suggestions for training
SESSION_TOKEN = re.compile(r"(web-[0-9a-f]{16})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})", re.ASCII)


def fingerprint(secret: str) -> str:
    """A stable, non-reversible client id for a key (stored instead of the key itself)."""
    return "key-" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Caller:
    client: str  # who owns conversations: a key's fingerprint, a page session, or the address (open access)
    channel: str  # "api" (API key or open access) or "web" (chat page session)
    limited_as: str  # whose rate limit a request counts against: the key, or the address for everyone else
    may_review: bool = False


class KeyRing:
    """The server's API keys, each with its role, kept only as HMACs under a random per-process salt.

    Nothing in memory equals a key, and a token is compared with every key in constant time, so neither a memory
    dump nor response timing tells an attacker what a key looks like.
    """

    def __init__(self, roles: dict[str, str]):
        self.salt = secrets.token_bytes(32)
        self.hashed = [(self._hash(key), role) for key, role in roles.items()]

    def __bool__(self) -> bool:
        return bool(self.hashed)

    def _hash(self, token: str) -> bytes:
        return hmac.new(self.salt, token.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def role(self, token: str) -> str | None:
        """The role of the key `token` is, else None (any string: it is hashed before it is compared)."""
        digest, found = self._hash(token), None
        for hashed, role in self.hashed:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(hashed, digest):
                found = role
        return found


class SessionTokens:
    """Stateless tokens for the chat page: `<session id>.<expiry>.<HMAC>`, signed with the server's secret.

    The page must work for customers who have no API key, so it gets a short-lived token that is only good
    for what the page does, within its own session's conversations.
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
        """The session id of a valid, unexpired token, else None (for any string a client may send)."""
        match = SESSION_TOKEN.fullmatch(token)
        if not match:
            return None
        session, expires, signature = match.groups()
        if not hmac.compare_digest(self._sign(f"{session}.{expires}"), signature) or int(expires) < time.time():
            return None
        return session


def persistent_secret(path: Path) -> bytes:
    """The session-signing secret kept in `path` (hex, mode 0600), made on first use: page sessions outlive a restart.

    Made atomically: written to a private temporary file, then linked into place, so two servers starting at
    the same moment end up with the same secret and nobody ever reads a half-written one.
    """
    try:
        if not path.exists():
            make_secret_file(path)
        status = path.stat()
        secret_text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot keep the chat page's session secret in {path}: {exc}") from None
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise ConfigError(f"{path} (the chat page's session secret) must belong to this user and be readable by "
                          f"nobody else (mode {status.st_mode & 0o777:o}): chown it, then chmod 600 {path}")
    try:
        secret = bytes.fromhex(secret_text.strip())
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ConfigError(f"{path} is not a session secret (64 hex digits); delete it and a new one is made")
    return secret


def make_secret_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it with mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another server made it first: use theirs
    finally:
        os.unlink(tmp)


class RateLimiter:
    """Token bucket per client: `per_minute` requests a minute on average, bursts up to `per_minute`."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def _tokens(self, client: str, now: float) -> float:
        tokens, last = self.buckets.get(client, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def wait(self, client: str) -> float:
        """The seconds before `client` may go ahead (0: now), without using up one of its requests."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            tokens = self._tokens(client, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def check(self, client: str) -> float:
        """0 when the request may go ahead (and is counted), else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            now = time.monotonic()
            if len(self.buckets) > 10_000:  # forget clients whose bucket has refilled: memory stays bounded
                full_after = self.capacity / self.rate
                self.buckets = {c: (t, at) for c, (t, at) in self.buckets.items() if now - at < full_after}
            tokens = self._tokens(client, now)
            if tokens >= 1:
                self.buckets[client] = (tokens - 1, now)
                return 0.0
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
