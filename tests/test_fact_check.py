"""The fact check of grounded answers (knowledge/facts.py): a sentence stating an amount, duration, time or contact
that neither the passages nor the conversation state is left out, and the answer ends with the handoff."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecombot.knowledge import Grounding, Hit, Passage
from ecombot.knowledge.facts import FactCheck, KnownFacts
from fake_knowledge import HANDOFF, RETURNS, SHIPPING, fake_grounder

POLICY = ("Standard delivery costs €4.95 and takes 3-5 business days; it is free on orders of 75 euros or more. "
          "Questions: help@shop.example or 1-800-555-0142, 9 am to 5 pm.")


@pytest.mark.parametrize("answer, supported", [
    ("Delivery costs €4.95.", True),
    ("It takes 5 business days.", True),  # one end of the stated range, same unit
    ("It is free from $75.", True),  # the amount is stated as a bare number
    ("Call 1-800-555-0142.", True),
    ("Delivery costs €5.95.", False),
    ("It takes 5 weeks.", False),  # the number is stated, but as days
    ("Returns within 30 days.", False),
    ("Write to sales@shop.example.", False),
    ("Call 1-800-555-0143.", False),
    ("We open at 8 am.", False),
    ("We open at 9 am.", True),
])
def test_a_fact_is_supported_when_the_store_states_it(answer, supported):
    assert (KnownFacts([POLICY]).unsupported(answer) == []) is supported


def test_the_unsupported_sentence_goes_and_the_answer_ends_with_the_handoff():
    check = FactCheck(KnownFacts([POLICY]), HANDOFF)
    said = check.check("Delivery costs €4.95. Express delivery costs €12.99! It is free from €75.")
    assert said == f"Delivery costs €4.95. It is free from €75. {HANDOFF}"
    assert (check.dropped, check.left_out) == (["$12.99"], ["Express delivery costs €12.99!"])


def test_a_list_keeps_its_other_lines_and_an_answer_of_invented_facts_is_the_handoff():
    check = FactCheck(KnownFacts([POLICY]), HANDOFF)
    assert check.check("Prices:\n- standard: €4.95\n- express: €12.99\n- free from €75") == (
        f"Prices:\n- standard: €4.95\n- free from €75\n{HANDOFF}")
    check = FactCheck(KnownFacts([POLICY]), HANDOFF)
    assert check.check("Returns are free within 30 days.") == HANDOFF and check.dropped == ["30 day"]


def test_an_answer_whose_facts_are_stated_is_given_as_generated():
    answer = "Sure!  Delivery costs €4.95 (3-5 business days).\n\nWrite to help@shop.example."
    check = FactCheck(KnownFacts([POLICY]), HANDOFF)
    assert check.check(answer) == answer and check.dropped == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["Delivery costs €4.95.", " Express costs €12.99.", "\n- 3-5 business days",
                                 " Returns: 30 days", "! ", ".", " ", "\n", "Thanks", " 9 am"]), max_size=8),
       st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=20))
def test_a_stream_shows_what_the_whole_answer_shows(pieces, cuts):
    """However the tokens arrive, the customer sees what the whole answer would give, and never an unchecked unit."""
    answer = "".join(pieces)
    whole = FactCheck(KnownFacts([POLICY]), HANDOFF).check(answer)
    check, shown, at, i = FactCheck(KnownFacts([POLICY]), HANDOFF), "", 0, 0
    while at < len(answer):
        piece = answer[at:at + cuts[i % len(cuts)]]
        at, i = at + len(piece), i + 1
        shown += check.feed(piece)
        assert "12.99" not in shown and "30 days" not in shown
    assert shown + check.flush() == whole


def test_the_grounder_checks_against_the_whole_knowledge_base_and_the_conversation():
    long = Passage("policy.md", "Policies > Returns", 3,
                   "Unworn shoes can be returned. " * 30 + "Refunds take 14 days.")
    grounder = fake_grounder((long, SHIPPING), check_facts=True)
    grounding = grounder.ground([{"role": "user", "content": "My order HP-10482 arrived. How do I return shoes?"}])
    check = grounder.fact_check(grounding)
    assert [hit.passage for hit in grounding.hits] == [long]  # the shipping passage was not found, and the prompt
    assert "14 days" not in grounding.messages[-1]["content"]  # cut the long one before its last sentence
    answer = "Refunds take 14 days for order 10482. Parcels ship within 2 working days."
    assert check.check(answer) == answer
    assert grounder.fact_check(grounding).check("Refunds take 10 days.") == HANDOFF


def test_an_old_value_is_caught_once_the_store_changed_it():
    """After a policy edit the weights still say 30 days; the knowledge base says 45."""
    edited = Passage(RETURNS.source, RETURNS.heading, RETURNS.line, RETURNS.text.replace("30", "45"))
    grounder = fake_grounder((edited, SHIPPING), check_facts=True)
    grounding = grounder.ground([{"role": "user", "content": "Can I return my shoes?"}])
    assert grounder.fact_check(grounding).check("Yes, within 45 days.") == "Yes, within 45 days."
    assert grounder.fact_check(grounding).check("Yes, within 30 days.") == HANDOFF


def test_nothing_is_checked_when_the_check_is_off_or_the_answer_is_not_generated():
    covered = [{"role": "user", "content": "Can I return my shoes?"}]
    assert fake_grounder().fact_check(fake_grounder().ground(covered)) is None  # off
    grounder = fake_grounder(check_facts=True)
    assert grounder.fact_check(grounder.ground(covered)) is not None
    assert grounder.fact_check(grounder.ground([{"role": "user", "content": "Gift cards?"}])) is None  # handoff given
    assert grounder.fact_check(Grounding(covered, [Hit(RETURNS, 1.0)], answer="stored")) is None
    assert grounder.fact_check(Grounding(covered)) is None  # no passage to check against
