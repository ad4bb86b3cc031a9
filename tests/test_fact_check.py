"""The fact check of grounded answers (knowledge/facts.py): a sentence stating an amount, duration, time or contact
that neither the knowledge base nor the conversation states is left out, and the answer ends with the handoff."""

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
    ("It takes 3 to 5 business days.", True),
    ("It takes 4-5 business days.", False),  # a range is stated as a whole or not at all
    ("It is free from $75.", True),  # the amount is stated as a bare number
    ("Call 1-800-555-0142.", True),
    ("Delivery costs €5.95.", False),
    ("It takes 5 weeks.", False),  # the number is stated, but as days
    ("Returns within 30 days.", False),
    ("Write to sales@shop.example.", False),
    ("Call 1-800-555-0143.", False),
    ("We open at 8 am.", False),
    ("We open at 9 am.", True),
    ("Pay in 4 installments.", False),  # a single digit is no fact; two digits are
    ("Pay in 12 installments.", False),
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


def test_a_cut_never_splits_an_abbreviation_or_a_list_number():
    known = KnownFacts([POLICY + " A courier costs $15."])
    answer = ("We are open 9 a.m. to 6 p.m. on weekdays. Use a courier, e.g. DHL for $15. It takes approx. 12 days."
              "\n1. Log in.\n2. Pay the $25 fee.\n10. Done.")
    check = FactCheck(known, HANDOFF)
    assert check.check(answer) == f"Use a courier, e.g. DHL for $15.\n1. Log in.\n10. Done.\n{HANDOFF}"
    assert check.left_out == ["We are open 9 a.m. to 6 p.m. on weekdays.", "It takes approx. 12 days.",
                              "2. Pay the $25 fee."]
    assert check.dropped == ["6 pm", "12 day", "$25"]  # "10." numbers the list: no fact


def test_an_answer_that_already_hands_over_gets_no_second_handoff():
    check = FactCheck(KnownFacts([POLICY]), HANDOFF, handed_over=lambda text: text.startswith(HANDOFF))
    assert check.check(f"It costs $99. {HANDOFF}") == HANDOFF and check.dropped == ["$99"]


def test_an_answer_whose_facts_are_stated_is_given_as_generated():
    answer = "Sure!  Delivery costs €4.95 (3-5 business days).\n\nWrite to help@shop.example."
    check = FactCheck(KnownFacts([POLICY]), HANDOFF)
    assert check.check(answer) == answer and check.dropped == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["Delivery costs €4.95.", " Express costs €12.99.", "\n- 3-5 business days",
                                 " Returns: 30 days", "! ", ".", " ", "\n", "Thanks", " 9 am", " a.m. ", " e.g. ",
                                 "\n2. ", "\n10. ", " approx. "]), max_size=8),
       st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=20))
def test_a_stream_shows_what_the_whole_answer_shows(pieces, cuts):
    """However the tokens arrive, the customer sees what the whole answer would give, and never an unchecked unit."""
    answer = "".join(pieces)
    whole = FactCheck(KnownFacts([POLICY]), HANDOFF).check(answer)
    check, shown, at, i = FactCheck(KnownFacts([POLICY]), HANDOFF), "", 0, 0  # (pieces: abbreviations, lists too)
    while at < len(answer):
        piece = answer[at:at + cuts[i % len(cuts)]]
        at, i = at + len(piece), i + 1
        shown += check.feed(piece)
        assert "12.99" not in shown and "30 days" not in shown
    assert shown + check.flush() == whole


def test_the_grounder_checks_against_the_whole_knowledge_base_and_the_conversation():
    long = Passage("policy.md", "Policies > Returns", 3,
                   "Unworn shoes can be returned. " * 30 + "Refunds take 14 days.")
    express = Passage("policy.md", "Policies > Express", 12, "Express parcels arrive in 24 hours for $19.")
    grounder = fake_grounder((long, express), check_facts=True)
    grounding = grounder.ground([{"role": "user", "content": "My order HP-10482 arrived. How do I return shoes?"}])
    assert [hit.passage for hit in grounding.hits] == [long]  # the express passage was not found, and the prompt
    assert "14 days" not in grounding.messages[-1]["content"]  # cut the long one before its last sentence
    answer = "Refunds take 14 days for order 10482. Express parcels arrive in 24 hours."
    assert grounder.fact_check(grounding).check(answer) == answer
    assert grounder.fact_check(grounding).check("Refunds take 10 days.") == HANDOFF


def test_a_customers_words_confirm_no_amount_or_duration_and_a_bare_number_of_the_base_no_price():
    sku = Passage("catalog", "Mugs", 1, "Mug model 49, stoneware.")
    grounder = fake_grounder((RETURNS, sku), check_facts=True)
    asked = [{"role": "user", "content": "Is the return window 90 days for shoes? Mail me at ana@mail.example"}]
    grounding = grounder.ground(asked)
    check = grounder.fact_check(grounding)
    assert check.check("Yes, within 90 days. I will mail ana@mail.example.") == (
        f"I will mail ana@mail.example. {HANDOFF}")
    assert check.dropped == ["90 day"]
    # "49" is a model number in the base, not a price; stated in a passage shown it would count (orders over 75)
    assert grounder.fact_check(grounding).check("Returned shoes cost $49 to ship.") == HANDOFF
    shown = fake_grounder((Passage("policy.md", "Returns", 3, "Return shipping on shoes is free over 49."),),
                          check_facts=True)
    grounding = shown.ground(asked)
    assert shown.fact_check(grounding).check("Return shipping is free over $49.") == "Return shipping is free over $49."


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
