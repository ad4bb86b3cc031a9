"""Remove e-mail addresses, payment card numbers and phone numbers from text before it is stored.

By hand because the rules are small and must run on every write; each is linear in the text's length (a 64 KiB
message costs milliseconds). Stored text is training data later, so a false positive costs a word; a miss stores a
customer's card. What counts:

- **card**: 13-19 digits passing the Luhn check, written in one piece or grouped the way cards print (a first group
  of 4 digits, inner groups of 4 or 6, a last group of 1-6: 4-4-4-4, 4-6-5, 4-4-4-4-3) with one separator throughout:
  a space, two spaces, a dash, a dot or an underscore. Letters or punctuation may touch it (`ref-4111…`), and so may
  a 1-3 digit number (a quantity, a CVV) or another card with the same separator; a longer group with the same
  separator makes it part of a longer number (a tracking number 9400 1000 0000 0000 0000 00), not a card.
- **phone**: a leading + and 8-15 digits; or 9-15 digits in groups separated by a space, dot, dash or slash, or with
  the area code in parentheses; or a bare run of 10-15 digits. A date (2026-11-26, 26.11.2026) is never part of
  one, and a list of 1-2 digit numbers (sizes 38 40 42 44 46) is one only when it starts with 0 (01 23 45 67 89).
  Shorter bare numbers are left alone: order numbers, prices and dates more often than phones.
- **e-mail**: name@domain.tld, Unicode letters included.

The README's Serving section lists what is redacted though it is not personal, and what is missed.
"""

from __future__ import annotations

import re

EMAIL_DOMAIN = re.compile(r"[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
# digit groups and what joins them; which stretches of a run are cards is decided in `_redact_cards`
CARD_RUN = re.compile(r"\d+(?:(?:[^\S\r\n]{1,2}|[._-])\d+)*")
DIGITS = re.compile(r"\d+")
# 2026-11-26, 26.11.2026, 11/26/26; not the start of a number going on the same way (01.23.45.67.89)
DATE = r"(?:\d{4}(?P<ymd>[-./])\d{1,2}(?P=ymd)\d{1,2}|\d{1,2}(?P<dmy>[-./])\d{1,2}(?P=dmy)(?:\d{4}|\d{2}))(?![-./]?\d)"
# a phone-like run: one digit or a parenthesised group at a time, each after at most one separator
PHONE_RUN = r"\+?(?:\(\d+\)|\d)(?:[ ./-]?(?:\(\d+\)|\d))*"
PHONE = re.compile(rf"(?<!\d)(?:(?P<date>{DATE})|{PHONE_RUN})")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card_end(groups: list[str], separators: list[str], first: int) -> int | None:
    """The last group of the longest card number starting at group `first`, or None. `separators[k]` joins groups
    k and k + 1; grouped, a card is printed 4-4-4-4, 4-6-5, 4-4-4-4-3...: a first group of 4 digits, inner groups of
    4 or 6, a last group of 1-6, one separator throughout."""
    end, digits = None, ""
    for last in range(first, len(groups)):
        if last > first:
            before = groups[last - 1]  # now the first or an inner group
            if separators[last - 1] != separators[first] or len(before) not in ((4,) if last - 1 == first else (4, 6)):
                break
        digits += groups[last]
        if len(digits) > 19:
            break
        if len(digits) >= 13 and (last == first or len(groups[last]) <= 6) and luhn_valid(digits):
            end = last
    return end


def _continues_number(groups: list[str], separators: list[str], joined: str, group: int, step: int) -> bool:
    """Whether `group`, next to a grouped card (before it: step -1, after it: +1), continues the same number: 4+ digits
    joined to the card by the card's separator and not tied on its far side to other digits in another way (then it
    ends a number of its own, a phone 555-123-4567 before the card)."""
    link, beyond = (group, group - 1) if step < 0 else (group - 1, group)  # separators[k] joins groups k and k + 1
    tied_beyond_the_same_way = not 0 <= beyond < len(separators) or separators[beyond] == joined
    return separators[link] == joined and len(groups[group]) >= 4 and tied_beyond_the_same_way


def _redact_cards(run: re.Match) -> str:
    text = run.group(0)
    spans = [m.span() for m in DIGITS.finditer(text)]
    groups = [text[a:b] for a, b in spans]
    separators = [text[spans[k][1]:spans[k + 1][0]] for k in range(len(spans) - 1)]
    ends = [_card_end(groups, separators, first) for first in range(len(groups))]
    out, done, first, previous_end = [], 0, 0, None
    while first < len(groups):
        end = ends[first]
        if end is not None and end > first:  # grouped: not the middle of a longer number (a tracking number)
            joined = separators[first]
            before = (first > 0 and previous_end != first - 1  # (right after another card is fine)
                      and _continues_number(groups, separators, joined, first - 1, -1))
            after = (end + 1 < len(groups) and ends[end + 1] is None
                     and _continues_number(groups, separators, joined, end + 1, 1))
            end = None if before or after else end
        if end is None:
            first += 1
            continue
        out += [text[done:spans[first][0]], "[card]"]
        done, first, previous_end = spans[end][1], end + 1, end
    return "".join(out) + text[done:]


def _redact_phone(match: re.Match) -> str:
    text = match.group(0)
    if match.group("date"):
        return text
    groups = DIGITS.findall(text)
    digits = "".join(groups)
    if text.startswith("+"):
        return "[phone]" if 8 <= len(digits) <= 15 else text
    if len(groups) == 1:
        return "[phone]" if 10 <= len(digits) <= 15 else text
    list_of_small_numbers = max(len(g) for g in groups) <= 2 and not digits.startswith("0")
    return "[phone]" if 9 <= len(digits) <= 15 and not list_of_small_numbers else text


def _redact_international_phone(match: re.Match) -> str:
    return _redact_phone(match) if match.group(0).startswith("+") else match.group(0)


def _redact_emails(text: str) -> str:
    """Each @ with a name before it and a domain after it, found from the @ outwards: a pattern tried at every start
    position rescans a long word each time (seconds for a 64 KiB one)."""
    out, done = [], 0
    at = text.find("@")
    while at != -1:
        start = at
        while start > done and (text[start - 1].isalnum() or text[start - 1] in "_.%+-"):
            start -= 1
        domain = EMAIL_DOMAIN.match(text, at + 1)
        if start < at and domain:
            out += [text[done:start], "[email]"]
            done = domain.end()
        at = text.find("@", max(at + 1, done))
    return "".join(out) + text[done:]


def redact(text: str) -> str:
    """`text` with e-mails, valid card numbers and phone numbers replaced by [email], [card], [phone].

    Numbers starting with + go first: the digits after the country code (+1 8031323343779) could pass for a card
    and leave the country code behind."""
    text = _redact_emails(text)
    text = PHONE.sub(_redact_international_phone, text)
    text = CARD_RUN.sub(_redact_cards, text)
    return PHONE.sub(_redact_phone, text)
