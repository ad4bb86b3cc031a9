"""Checkable facts (amounts, durations, percentages, times, contacts) and the check that keeps a grounded answer from
stating one the store never wrote.

Why by hand: a 270M model copies a passage's numbers well but, for a question its passages answer badly, it states the
numbers of the nearest answer it was trained on, or makes one up ("a €1500 credit on delivery"; invented-fact rates
of 0.05-0.34 on a second store's FAQ, README Results). A wrong price or deadline is the one mistake a support bot must
not make, and no decoding setting or library check (NLI models are larger than the bot) tells a stated fact from an
invented one as cheaply as comparing it with what the store wrote (knowledge/grounding.py, Grounder.fact_check).
Evaluation measures facts with the same extraction (evaluate/metrics.py), so the check and the metric agree on what
a fact is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

UNITS = r"((?:business|working)\s+days?|days?|hours?|minutes?|weeks?|months?|years?|payments?|installments?)\b"
NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"  # 1,000.50 | 4.95 | 30
DASH = r"\s*(?:[-–—]|to)\s*"
# In priority order: each match is blanked out before the next pattern looks, so "1-800-555-0142" is one phone
# number (not plain numbers), "$4.95" one amount, "8 am–8 pm" two times (not a range).
FACT_PATTERNS = (
    ("email", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    ("url", r"(?:https?://|www\.)[^\s<>()\"']+"),
    ("phone", r"(?<![\d-])(?:\d{1,3}[-. ])?\d{3}[-. ]\d{3}[-. ]\d{4}(?![\d-])"),
    ("money", rf"[$€£]\s?(?:{NUMBER})|\b(?:{NUMBER})\s*(?:dollars|usd|euros?|eur|pounds|gbp)\b"),
    ("percent", rf"\b(?:{NUMBER})\s*(?:%|percent\b)"),
    ("time", r"\b\d{1,2}(?::\d{2})?\s*[ap]\.?m\b\.?|\b\d{1,2}:\d{2}\b"),
    ("range", rf"\b\d+{DASH}\d+(?:\s+|-){UNITS}"),
    ("quantity", rf"\b(?:{NUMBER})(?:\s+|-)(?:[a-z]+-[a-z]+\s+)?{UNITS}"),
    ("number", r"\b(?:\d{1,3}(?:,\d{3})+|\d+\.\d+|\d{2,})\b"),
)
FACT_RE = [(kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in FACT_PATTERNS]
MAY_STATE_A_FACT = re.compile(r"\d|@|www\.|https?://", re.IGNORECASE)  # every pattern needs one of these


def plain_number(text: str) -> str:
    """'1,000' -> '1000', '4.50' -> '4.5', '50.00' -> '50'."""
    value = float(text.replace(",", ""))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _unit_name(text: str) -> str:
    """'Business  Days' -> 'business day'."""
    words = text.lower().split()
    return " ".join(words[:-1] + [words[-1].rstrip("s")])


def _normalised_fact(kind: str, text: str) -> str:
    text = text.strip().lower()
    if kind == "email":
        return text.rstrip(".")
    if kind == "url":
        return re.sub(r"^(https?://)?(www\.)?", "", text).rstrip(".,;:!?/*_`]")  # a Markdown link's tail too
    if kind == "phone":
        return re.sub(r"\D", "", text)[-10:]  # with or without the country code
    if kind == "money":
        return "$" + plain_number(re.search(NUMBER, text).group())
    if kind == "percent":
        return plain_number(re.search(NUMBER, text).group()) + "%"
    if kind == "time":
        hour, minute = (re.findall(r"\d+", text) + ["00"])[:2]
        hour, half = int(hour), ("pm" if "p" in text else "am" if "a" in text else None)
        if half is None:  # 24-hour clock: 14:00 is 2 pm
            hour, half = (hour - 12 if hour > 12 else hour or 12), ("pm" if hour >= 12 else "am")
        return f"{hour}{':' + minute if minute != '00' else ''} {half}"
    if kind == "range":
        low, high = re.findall(r"\d+", text)[:2]
        return f"{low}-{high} {_unit_name(re.search(UNITS, text, re.IGNORECASE).group())}"
    if kind == "quantity":
        unit = re.search(UNITS + "$", text, re.IGNORECASE).group()
        return f"{plain_number(re.match(NUMBER, text).group())} {_unit_name(unit)}"
    return plain_number(text)


def facts_by_kind(text: str) -> dict[str, set[str]]:
    """The checkable facts of a text by kind (FACT_PATTERNS), normalised so that different spellings of one fact
    compare equal: amounts ("$4.95", "4.95 dollars"), quantities and ranges with units ("30 days", "1-year",
    "3–5 business days", "3 to 5 business days"), percentages, clock times ("2 pm", "14:00"), e-mail addresses,
    URLs, phone numbers and other numbers of two or more digits. Single digits without a unit ("step 2") are not
    facts."""
    facts: dict[str, set[str]] = {}
    if not MAY_STATE_A_FACT.search(text):  # most of a store's sentences: no pattern to try
        return facts
    for kind, pattern in FACT_RE:
        matches = list(pattern.finditer(text))
        if matches:
            facts[kind] = {_normalised_fact(kind, match.group()) for match in matches}
            text = pattern.sub(lambda m: " " * len(m.group()), text)
    return facts


def extract_facts(text: str) -> set[str]:
    """Every checkable fact of a text (facts_by_kind), of whatever kind."""
    return set().union(*facts_by_kind(text).values())

# Kinds compared exactly: a contact or a clock time is right or wrong as a whole; so is a range ("1-3 business days"
# pieced together from "1-2" and "3-8" is no range the store gave), though its ends state durations ("5 business
# days" from "3-5 business days").
EXACT_KINDS = frozenset({"email", "url", "phone", "time"})
AS_WRITTEN = EXACT_KINDS | {"range"}
# What a customer's own words may support in an answer: the order number or address they gave, not a price, a
# duration or a percentage ("Is the return window 90 days?" must not make "Yes, within 90 days" pass).
IDENTIFIER_KINDS = frozenset({"email", "url", "phone", "number"})
# Where a unit of text ends: after a sentence's end that a space follows, or before a line break (the space or the
# break opens the next unit, so a unit left out takes its own). A list's items and an answer's sentences are checked
# one by one, so one wrong line does not cost the customer the rest of the answer. Not after an abbreviation ("9
# a.m. to 6 p.m.", "e.g. DHL", "approx. 12 days") or a list's number ("2. Pay the fee"): cutting there would leave a
# sentence saying something else.
ABBREVIATIONS = ("approx", "incl", "excl", "ca", "vs", "no", "nr")
UNIT_END = re.compile(r"(?<=[.!?])" + "".join(rf"(?<!\b{word}\.)" for word in ABBREVIATIONS)
                      + r"(?<!\b[a-z]\.)(?<!^\d\.)(?<!^\d\d\.)(?=\s)|(?=\n)", re.IGNORECASE | re.MULTILINE)
LIST_NUMBER = re.compile(r"^\s*\d{1,2}[.)](?=\s)", re.MULTILINE)  # "10. Pay the fee": a list's number, not a fact


def _numbers(fact: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?", fact))


def _family(kind: str, fact: str) -> str:
    """Facts whose numbers may be compared: durations with durations ('5 business day' is stated by '3-5 business
    day'), payments with instalments, amounts with amounts, percentages with percentages."""
    if kind not in ("quantity", "range"):
        return kind
    unit = fact.rsplit(" ", 1)[-1]
    return f"unit {'payment' if unit == 'installment' else unit}"


class KnownFacts:
    """The facts of `texts` (of `kinds` only, when given) on top of `base`'s: per answer, the passages it was shown
    and the conversation are layered over the store's facts, read once, without copying them.

    A fact is known as written, or (amounts, durations, percentages) when each of its numbers is stated in its family
    ('5 business days' from '3-5 business days'), or, where `bare`, as a bare number ('$75' from 'orders over 75'):
    for the passages shown, not for the whole base, where a SKU or a year would make any price pass."""

    def __init__(self, texts: list[str], base: KnownFacts | None = None, kinds: frozenset[str] | None = None,
                 bare: bool = True):
        self.base, self.bare = base, bare
        self.facts: set[str] = set()
        self.numbers: dict[str, set[str]] = {}  # family -> the numbers stated in it
        for text in dict.fromkeys(texts):  # a store's Q&A pairs repeat their answers
            for kind, facts in facts_by_kind(text).items():
                if kinds is not None and kind not in kinds:
                    continue
                self.facts |= facts
                if kind not in EXACT_KINDS:
                    for fact in facts:
                        self.numbers.setdefault(_family(kind, fact), set()).update(_numbers(fact))
        self.any_number = set().union(*self.numbers.values())

    def _states_number(self, kind: str, fact: str, number: str) -> bool:
        """`number` of `fact` is stated here or below: in its family, bare where that counts; a bare number
        anywhere."""
        found = (number in self.any_number if kind == "number" else number in self.numbers.get(_family(kind, fact), ())
                 or (self.bare and number in self.numbers.get("number", ())))
        return found or (self.base is not None and self.base._states_number(kind, fact, number))

    def _has(self, fact: str) -> bool:
        return fact in self.facts or (self.base is not None and self.base._has(fact))

    def supports(self, kind: str, fact: str) -> bool:
        if self._has(fact):
            return True
        return kind not in AS_WRITTEN and all(self._states_number(kind, fact, n) for n in _numbers(fact))

    def unsupported(self, text: str) -> list[str]:
        """The facts of `text` not known, in order; a list's own numbering is not a fact."""
        return sorted(fact for kind, facts in facts_by_kind(LIST_NUMBER.sub("", text)).items() for fact in facts
                      if not self.supports(kind, fact))


def never(text: str) -> bool:
    return False


@dataclass
class FactCheck:
    """Checks a generated answer as it streams, one sentence or line at a time: a unit stating a fact that `known`
    does not support is left out, and an answer that lost any unit ends with the store's `handoff` (an agent takes
    the question over) instead of guessing, unless it already says it (`handed_over`: knowledge.is_handoff). Text is
    released once its unit is complete, so a stream shows whole sentences."""

    known: KnownFacts
    handoff: str
    handed_over: Callable[[str], bool] = never
    pending: str = ""
    shown: str = ""  # the text released so far
    dropped: list[str] = field(default_factory=list)  # the facts left out
    left_out: list[str] = field(default_factory=list)  # the units they were stated in
    lines: bool = False  # a unit left out was a line of its own: the handoff gets one too

    def _checked(self, text: str) -> str:
        kept, start = [], 0
        for end in sorted({m.end() for m in UNIT_END.finditer(text)} | {len(text)}):
            unit, start = text[start:end], end
            if not unit:
                continue
            wrong = self.known.unsupported(unit)
            if wrong:
                self.dropped += wrong
                self.left_out.append(unit.strip())
                self.lines = self.lines or unit.startswith("\n")
            else:
                kept.append(unit)
        released = "".join(kept)
        if not self.shown:  # the answer starts with its first kept unit, not with the space a cut one left
            released = released.lstrip()
        self.shown += released
        return released

    def feed(self, chunk: str) -> str:
        self.pending += chunk
        end = max((m.end() for m in UNIT_END.finditer(self.pending)), default=0)
        ready, self.pending = self.pending[:end], self.pending[end:]
        return self._checked(ready)

    def flush(self) -> str:
        rest, self.pending = self._checked(self.pending), ""
        if not self.dropped or self.handed_over(self.shown):
            return rest
        if not self.shown:
            return self.handoff
        gap = "" if self.shown[-1:].isspace() else "\n" if self.lines or "\n" in self.shown else " "
        return rest + gap + self.handoff

    def check(self, answer: str) -> str:
        """A whole answer, as the stream would show it."""
        return self.feed(answer) + self.flush()
