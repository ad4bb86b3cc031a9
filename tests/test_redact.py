"""Redaction before storage: generated cards, phones and e-mails inside random text never reach the store, and
the numbers support conversations are full of (orders, prices, dates, quantities, tracking numbers) stay as written."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecombot.serve.redact import luhn_valid, redact

FAST = settings(max_examples=200, deadline=None)
CARD_SEPARATORS = (" ", "-", ".", "_", "  ")


def luhn_completed(body: str) -> str:
    return next(body + d for d in string.digits if luhn_valid(body + d))


def grouped(digits: str, sizes: list[int], separator: str) -> str:
    """`digits` cut into groups of `sizes` (what is left over is one more group), joined by `separator`."""
    parts, at = [], 0
    for size in sizes:
        parts.append(digits[at:at + size])
        at += size
    return separator.join(part for part in parts + [digits[at:]] if part)


@st.composite
def cards(draw) -> str:
    """A Luhn-valid 13-19 digit number as people type cards: in one piece or printed groups, one separator."""
    length = draw(st.integers(13, 19))
    number = luhn_completed(draw(st.text(string.digits, min_size=length - 1, max_size=length - 1)))
    fours = [4] * (length // 4) + ([length % 4] if length % 4 else [])
    shapes = [[length], fours] + {15: [[4, 6, 5]], 14: [[4, 6, 4]]}.get(length, [])
    return grouped(number, draw(st.sampled_from(shapes)), draw(st.sampled_from(CARD_SEPARATORS)))


def digits_of(draw, length: int, first: str = string.digits) -> str:
    return draw(st.sampled_from(first)) + draw(st.text(string.digits, min_size=length - 1, max_size=length - 1))


@st.composite
def phones(draw) -> str:
    """International (+CC, optional (0) trunk) and local forms: North American, and national numbers starting with 0."""
    separator = draw(st.sampled_from([" ", "-", ".", ""]))
    form = draw(st.sampled_from(["international", "north-american", "national"]))
    if form == "international":
        country = digits_of(draw, draw(st.integers(1, 3)), "123456789")
        trunk = draw(st.sampled_from(["", " (0)", "(0)"]))
        rest = digits_of(draw, draw(st.integers(max(6, 8 - len(country)), 14 - len(country))))
        sizes = draw(st.lists(st.integers(2, 4), max_size=len(rest) // 2))
        return f"+{country}{trunk} " + grouped(rest, sizes, separator)
    if form == "north-american":
        area, exchange, line = digits_of(draw, 3, "23456789"), digits_of(draw, 3, "23456789"), digits_of(draw, 4)
        return draw(st.sampled_from([f"({area}) {exchange}-{line}", f"1-{area}-{exchange}-{line}",
                                     f"+1 {area} {exchange} {line}", f"{area}{exchange}{line}",
                                     separator.join([area, exchange, line])]))
    number = "0" + digits_of(draw, draw(st.integers(9, 10)))
    shape = draw(st.sampled_from([[3, 4], [5], [2, 2, 2, 2], [4], []]))  # 020 7946 0958, 07700 900123, 01 23 45 67 89
    return grouped(number, shape, draw(st.sampled_from([" ", "-", ".", "/"])))


LOCAL_PART = st.text(string.ascii_letters + string.digits + "._%+-éñøü", min_size=1, max_size=20)
LABEL = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=10)
EMAILS = st.builds(lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}", LOCAL_PART,
                   st.lists(LABEL, min_size=1, max_size=3), st.text(string.ascii_letters, min_size=2, max_size=6))


def fillers(without: str = ""):
    """Text around the items: anything but digits and @ (so whatever digits or @ remain came from an item), with a
    letter in it, so two items never run together into one longer number."""
    text = st.text(st.characters(exclude_categories=("Nd", "Cs"), exclude_characters="@" + without), max_size=12)
    return st.builds(lambda a, letter, b: a + letter + b, text, st.characters(categories=("L",)), text)


# An address has no edge of its own inside a word ("contactana@x.org"): where one meets text, a space or punctuation.
ADDRESS_EDGE = st.sampled_from(" ,;:!?()<>\"'\n\t/")


@st.composite
def embedded(draw, items, filler=fillers()) -> str:
    """The items with random text before, between and after them; an item is text, or (text, True) for an address."""
    parts = [(item, False) if isinstance(item, str) else item for item in draw(items)]
    text, after_address = "", False
    for part, address in parts + [("", False)]:
        edge_before, edge_after = (draw(ADDRESS_EDGE) if edge else "" for edge in (after_address, address))
        text += edge_before + draw(filler) + edge_after + part
        after_address = address
    return text


PERSONAL = st.lists(st.one_of(cards(), phones(), EMAILS.map(lambda email: (email, True))), min_size=1, max_size=5)


@FAST
@given(text=embedded(PERSONAL))
def test_no_card_phone_or_email_survives(text):
    redacted = redact(text)
    assert not any(ch.isdecimal() for ch in redacted) and "@" not in redacted, (text, redacted)


def two_digits(low: int, high: int):
    return st.integers(low, high).map(lambda n: f"{n:02d}")


YEAR = st.integers(1990, 2035).map(str)
DATES = st.one_of(st.builds(lambda y, m, d: f"{y}-{m}-{d}", YEAR, two_digits(1, 12), two_digits(1, 28)),
                  st.builds(lambda d, m, y: f"{d}.{m}.{y}", two_digits(1, 28), two_digits(1, 12), YEAR),
                  st.builds(lambda m, d, y: f"{m}/{d}/{y}", two_digits(1, 12), two_digits(1, 28), YEAR))
TIMES = st.builds(lambda h, m: f"{h}:{m}", st.integers(0, 23), two_digits(0, 59))
PRICES = st.one_of(st.builds(lambda n, c: f"${n:,}.{c:02d}", st.integers(0, 99_999), st.integers(0, 99)),
                   st.builds(lambda n, c: f"{n},{c:02d} €", st.integers(0, 9999), st.integers(0, 99)))
ORDINARY = st.lists(st.one_of(
    st.integers(1000, 999_999).map(lambda n: f"HP-{n}"),  # order numbers
    st.integers(1, 999_999_999).map(lambda n: f"#{n}"),
    PRICES, DATES, TIMES,
    st.builds(lambda d, t: f"{d} {t}", DATES, TIMES),
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 500), st.sampled_from([" x", " items", "%", " kg", " ml"])),
    st.builds(lambda a, b: f"{a}-{b} business days", st.integers(1, 9), st.integers(2, 14)),
    st.integers(10_000, 99_999).map(str),  # a ZIP code
    st.text(string.digits, min_size=17, max_size=17).map(lambda n: grouped(n, [3, 7, 7], "-")),  # 112-1234567-1234567
    st.builds(grouped, st.text(string.digits, min_size=22, max_size=22),  # a tracking number
              st.sampled_from([[22], [4, 4, 4, 4, 4, 2]]), st.sampled_from([" ", "-"])),
    st.lists(st.integers(1, 99), min_size=2, max_size=8).map(lambda ns: " ".join(map(str, ns))),  # sizes 38 40 42
), min_size=1, max_size=5)


@FAST
@given(text=embedded(ORDINARY, fillers(without="+")))  # +digits are a phone number
def test_order_numbers_prices_dates_and_quantities_are_kept(text):
    assert redact(text) == text


@pytest.mark.parametrize("text,expected", [
    ("ref-4111111111111111", "ref-[card]"),  # a dash before it
    ("card:4111.1111.1111.1111.", "card:[card]."),
    ("4111_1111_1111_1111", "[card]"),
    ("4111  1111  1111  1111 exp 12/27", "[card] exp 12/27"),  # double spaces
    ("Amex 3782 822463 10005, thanks", "Amex [card], thanks"),
    ("qty 2 4111 1111 1111 1111 123", "qty 2 [card] 123"),  # short numbers next to it: a quantity, a CVV
    ("4111 1111 1111 1111 5500 0000 0000 0004", "[card] [card]"),
    ("call 555-123-4567 4111 1111 1111 1111", "call [phone] [card]"),
    ("tel.+44 (0)20 7946 0958, 01.23.45.67.89 or 030/12345678", "tel.[phone], [phone] or [phone]"),
    ("josé.núñez+shop@correo.example.es.", "[email]."),
    # kept: a tracking number (22 digits in 4s holds Luhn-valid 16-digit stretches), an Amazon-style order
    ("USPS 9400 1000 0000 0000 0000 00 and order 112-1234567-1234567",
     "USPS 9400 1000 0000 0000 0000 00 and order 112-1234567-1234567"),
    ("on 2026-11-26 10:30, 26.11.2026 10 or 01/02/26", "on 2026-11-26 10:30, 26.11.2026 10 or 01/02/26"),
])
def test_redaction_examples(text, expected):
    assert redact(text) == expected


def test_redaction_is_linear_in_the_texts_length():
    """Every pattern starts only where a run starts: a 64 KiB word took seconds when each position rescanned it."""
    for text in ("a" * 65_536, "1-" * 32_768, "4111 " * 13_000, "(1" * 32_768, "a.b@" * 16_384):
        started = time.perf_counter()
        redact(text)
        assert time.perf_counter() - started < 1.0, text[:8]
