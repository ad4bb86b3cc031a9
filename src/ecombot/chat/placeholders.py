"""Fill `{{Order Number}}`-style placeholders in answers from what is known about the customer.

A placeholder is never shown raw: a known one gets its value, an unknown one becomes a plain phrase
("your order number") and the answer ends with one polite request for the missing details.
"""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
NAME_KEYS = {"name", "customername", "firstname", "fullname", "customerfirstname", "clientname"}


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


def normalise_context(values: dict[str, str]) -> dict[str, str]:
    """Request metadata {"Order Number": "A1"} -> {"ordernumber": "A1"}: the loose keys placeholders match."""
    return {_key(k): str(v).strip() for k, v in values.items() if str(v).strip()}


def missing_request(missing: list[str]) -> str:
    """One polite sentence asking for the details the answer needed but nobody gave us."""
    asked = [m.lower() for m in dict.fromkeys(missing) if _key(m) not in NAME_KEYS]
    if not asked:
        return ""
    listed = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + " and " + asked[-1]
    return f" Could you please share your {listed} so I can help you further?"


class PlaceholderStream:
    """Fills placeholders in text that arrives piece by piece: holds back text while a `{{ ... }}` may be open."""

    def __init__(self, context: dict[str, str]):
        self.context = context
        self.pending = ""
        self.missing: list[str] = []

    def _fill(self, text: str) -> str:
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if _key(name) in self.context:
                return self.context[_key(name)]
            self.missing.append(name)
            return "there" if _key(name) in NAME_KEYS else f"your {name.lower()}"

        return PLACEHOLDER.sub(replace, text)

    def feed(self, chunk: str) -> str:
        self.pending += chunk
        start = self.pending.rfind("{{")
        if start == -1 or "}}" in self.pending[start:]:
            start = len(self.pending) - 1 if self.pending.endswith("{") else len(self.pending)
        if len(self.pending) - start > 80:  # too long to be a placeholder: let it through
            start = len(self.pending)
        ready, self.pending = self.pending[:start], self.pending[start:]
        return self._fill(ready)

    def flush(self) -> str:
        """The rest of the text, plus the request for missing details when the answer needed any."""
        ready, self.pending = self.pending, ""
        return self._fill(ready) + missing_request(self.missing)


def fill_placeholders(text: str, context: dict[str, str]) -> str:
    stream = PlaceholderStream(context)
    return stream.feed(text) + stream.flush()
