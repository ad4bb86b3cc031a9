"""Fill `{{Order Number}}`-style placeholders in answers from what is known about the customer."""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def parse_context(pairs: list[str]) -> dict[str, str]:
    """`["Order Number=A123", "name=Ana"]` -> {"ordernumber": "A123", "name": "Ana"} (keys match loosely)."""
    context = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--context expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        context[_key(key)] = value.strip()
    return context


def fill_placeholders(text: str, context: dict[str, str]) -> str:
    """Known placeholders get their value; unknown ones become a readable `[Order Number]`, never raw braces."""
    def replace(match: re.Match) -> str:
        return context.get(_key(match.group(1)), f"[{match.group(1)}]")

    return PLACEHOLDER.sub(replace, text)


class PlaceholderStream:
    """Streaming version of fill_placeholders: holds back text while a `{{ ... }}` may still be open."""

    def __init__(self, context: dict[str, str]):
        self.context = context
        self.pending = ""

    def feed(self, chunk: str) -> str:
        self.pending += chunk
        start = self.pending.rfind("{{")
        if start == -1 or "}}" in self.pending[start:]:
            start = len(self.pending) - 1 if self.pending.endswith("{") else len(self.pending)
        if len(self.pending) - start > 80:  # too long to be a placeholder: let it through
            start = len(self.pending)
        ready, self.pending = self.pending[:start], self.pending[start:]
        return fill_placeholders(ready, self.context)

    def flush(self) -> str:
        ready, self.pending = self.pending, ""
        return fill_placeholders(ready, self.context)
