"""The reviewed feedback a new version learns from: which answers are new since the last versions, which are held out
for ever as guard items, and which correct a fact that the store's documents state otherwise (those go to the
knowledge base, not into the weights)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ecombot.data import Conversation
from ecombot.knowledge.facts import facts_by_kind
from ecombot.knowledge import Grounder, latest_question
from ecombot.serve.store import ReviewedAnswer

# A seeded fifth of each round's feedback is never trained on (by this version or any later one): the feedback
# slice that shows whether the round helped, and, added to the guard set, a check that later rounds keep it.
HOLDOUT_SHARE = 0.2
MIN_FOR_HOLDOUT = 5  # with fewer items every one is trained on and the slice is scored on them (said so)
# Facts compared with the knowledge base: a kind where two values are two different claims (not plain numbers,
# which a passage holds many of).
CHECKED_KINDS = ("email", "url", "phone", "money", "percent", "time", "range", "quantity")


@dataclass
class Contradiction:
    """An approved correction of a fact that a passage found for the question states the old way."""

    feedback_id: int
    question: str
    answer_says: list[str]
    passage_says: list[str]
    passage: dict  # Hit.to_source(): source, heading, line, label

    def describe(self) -> str:
        where = f"{self.passage['source']}" + (f" > {self.passage['heading']}" if self.passage.get("heading") else "")
        return (f"feedback {self.feedback_id} ({self.question[:60]!r}): the approved answer says "
                f"{', '.join(self.answer_says)} where {where} (line {self.passage.get('line')}) says "
                f"{', '.join(self.passage_says)}; edit that passage and re-add the file "
                "(`ecombot knowledge add`) instead of teaching the weights a fact the documents contradict")


@dataclass
class FactToCheck:
    """An approved answer stating a fact the bot's answer did not state at all (an agent's answer to a handed-over
    conversation, a reviewer's added detail) where a store document found for the question states another value of
    the same thing. Nothing tells which is out of date (no value of the bot's to have read there), so it is trained
    on as approved and said, with the passage to edit if the policy changed."""

    feedback_id: int
    question: str
    answer_says: list[str]
    passage_says: list[str]
    passage: dict  # Hit.to_source(): source, heading, line, label
    held_out: bool = False  # drawn into the feedback slice: never trained on

    def describe(self) -> str:
        where = f"{self.passage['source']}" + (f" > {self.passage['heading']}" if self.passage.get("heading") else "")
        used = "held out as the feedback slice (never trained on)" if self.held_out else "trained on as approved"
        return (f"feedback {self.feedback_id} ({self.question[:60]!r}): the approved answer adds "
                f"{', '.join(self.answer_says)} where {where} (line {self.passage.get('line')}) says "
                f"{', '.join(self.passage_says)}; {used}: if the policy changed, edit that passage and re-add the "
                "file (`ecombot knowledge add`), else correct the answer")


@dataclass
class FeedbackRound:
    train: list[Conversation]
    held_out: list[Conversation]
    contradictions: list[Contradiction] = field(default_factory=list)
    already_used: int = 0
    to_check: list[FactToCheck] = field(default_factory=list)

    @property
    def used_ids(self) -> list[int]:
        return [c.meta["feedback_id"] for c in self.train]

    @property
    def held_out_ids(self) -> list[int]:
        return [c.meta["feedback_id"] for c in self.held_out]


def as_conversation(item: ReviewedAnswer) -> Conversation:
    return Conversation(item.messages, source=f"feedback {item.feedback_id}",
                        meta={"feedback_id": item.feedback_id, "generated": item.generated,
                              "answered_by": item.version})


def keyed_facts(text: str) -> dict[str, set[str]]:
    """Facts by what they state: a quantity by its unit ('30 day' and '60 day' are two claims about one thing)."""
    keyed: dict[str, set[str]] = {}
    for kind, facts in facts_by_kind(text).items():
        if kind not in CHECKED_KINDS:
            continue
        for fact in facts:
            key = f"quantity:{fact.split(' ', 1)[1]}" if kind in ("quantity", "range") else kind
            keyed.setdefault(key, set()).add(fact)
    return keyed


def fact_changes(conv: Conversation) -> dict[str, tuple[set[str], set[str]]]:
    """What a correction changed: {key: (values the bot said, values the reviewer approved instead)}, for each thing
    both state differently ('30 day' -> '60 day'); empty for a thumbs-up or a correction of wording only."""
    approved, generated = keyed_facts(conv.answer), keyed_facts(conv.meta.get("generated", ""))
    return {key: (generated[key] - new, new - generated[key]) for key, new in approved.items()
            if key in generated and generated[key] - new and new - generated[key]}


def superseded(corrections: list[Conversation]) -> dict[str, set[str]]:
    """The values approved corrections replaced, by key: an answer still stating one is out of date."""
    old: dict[str, set[str]] = {}
    for conv in corrections:
        for key, (said, _) in fact_changes(conv).items():
            old.setdefault(key, set()).update(said)
    return old


def states_superseded(conv: Conversation, old: dict[str, set[str]]) -> bool:
    return any(facts & old.get(key, set()) for key, facts in keyed_facts(conv.answer).items())


def contradiction(conv: Conversation, grounding) -> Contradiction | None:
    """A correction that changed a fact (the bot said X, the reviewer approved Y for the same thing) where a passage
    found for the question still says X and not Y: the bot read X there, so the passage is what needs editing."""
    changed = fact_changes(conv)
    if not changed or not grounding.covered:
        return None
    for hit in grounding.hits:
        passage = keyed_facts(hit.passage.text)
        stale = [key for key, (old, new) in changed.items() if passage.get(key, set()) & old
                 and not passage.get(key, set()) & new]
        if stale:
            return Contradiction(conv.meta["feedback_id"], latest_question(conv.messages[:-1]),
                                 sorted(f for key in stale for f in changed[key][1]),
                                 sorted(f for key in stale for f in passage[key] & changed[key][0]), hit.to_source())
    return None


def fact_to_check(conv: Conversation, grounding) -> FactToCheck | None:
    """A fact the approved answer adds (a kind of thing the bot's answer stated no value of) that the store document
    found first for the question states otherwise. That document only: another one found is about something else
    as often as not ("a return label costs $5" is no claim about "free shipping over $50"), and a Q&A pair answers
    another question, whose values are its own."""
    approved, generated = keyed_facts(conv.answer), keyed_facts(conv.meta.get("generated", ""))
    added = {key: values for key, values in approved.items() if key not in generated}
    top = next((hit for hit in grounding.hits if hit.passage.question is None), None) if grounding.covered else None
    if not added or top is None:
        return None
    facts = keyed_facts(top.passage.text)
    differ = [key for key, values in added.items() if facts.get(key) and not facts[key] & values]
    if not differ:
        return None
    return FactToCheck(conv.meta["feedback_id"], latest_question(conv.messages[:-1]),
                       sorted(f for key in differ for f in added[key]), sorted(f for key in differ for f in facts[key]),
                       top.to_source())


def feedback_round(reviewed: list[ReviewedAnswer], used: set[int], held_before: set[int], seed: int,
                   grounder: Grounder | None, retried: set[int] = frozenset()) -> FeedbackRound:
    """The new items of `reviewed` (not trained on by the live version's lineage, never held out before), split
    into training and held-out items; with a grounder, items contradicting the knowledge base are set aside.
    `retried` items were training items of a rejected round: they train again, never moved to the held-out part."""
    fresh = [as_conversation(r) for r in reviewed if r.feedback_id not in used | held_before]
    contradictions, to_check = [], []
    if grounder is not None and fresh:
        groundings = grounder.ground_many([c.messages[:-1] for c in fresh])
        found = [contradiction(c, g) for c, g in zip(fresh, groundings)]
        contradictions = [f for f in found if f is not None]
        to_check = [check for c, g, f in zip(fresh, groundings, found)
                    if f is None and (check := fact_to_check(c, g)) is not None]
        fresh = [c for c, f in zip(fresh, found) if f is None]
    new = sorted((c for c in fresh if c.meta["feedback_id"] not in retried), key=lambda c: c.meta["feedback_id"])
    held_out: list[Conversation] = []
    if len(new) >= MIN_FOR_HOLDOUT:
        random.Random(seed).shuffle(new)
        held_out = new[:max(1, round(HOLDOUT_SHARE * len(new)))]
    held = {c.meta["feedback_id"] for c in held_out}
    for check in to_check:
        check.held_out = check.feedback_id in held
    return FeedbackRound([c for c in fresh if c.meta["feedback_id"] not in held], held_out, contradictions,
                         already_used=len(reviewed) - len(fresh) - len(contradictions), to_check=to_check)
