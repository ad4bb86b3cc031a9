"""Remove e-mail addresses, payment card numbers and phone numbers from text before it is stored.

By hand because the rules are small and must run on every write: cards are digit runs of 13-19 digits
(spaces/dashes allowed) that pass the Luhn check; phones are 8-15 digits written like a phone number
(a leading + and 8+ digits, or 9+ digits in groups separated by spaces, dots, dashes or parentheses),
or a bare run of 10-15 digits.
Shorter bare numbers are left alone: they are order numbers, prices and dates more often than phones.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(r"(?<![\w+])(?:\+\d[\d .()-]{6,}\d|\(?\d[\d .()-]{7,}\d)(?!\w)")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if luhn_valid(digits) else match.group(0)


def _phone(match: re.Match) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    written_like_phone = text.startswith("+") or bool(re.search(r"[ .()-]", text))
    if written_like_phone and (9 if not text.startswith("+") else 8) <= len(digits) <= 15:
        return "[phone]"
    return "[phone]" if text.isdigit() and 10 <= len(digits) <= 15 else text


def redact(text: str) -> str:
    """`text` with e-mails, valid card numbers and phone numbers replaced by [email], [card], [phone]."""
    text = EMAIL.sub("[email]", text)
    text = CARD.sub(_card, text)
    return PHONE.sub(_phone, text)
