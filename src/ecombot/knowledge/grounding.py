"""One prompt layout for grounded answers, the same in training, chat, serving and evaluation: the passages found
for the customer's latest question are placed in that user turn, above the question. A question the knowledge base
does not cover gets the store's handoff answer instead of a generated one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from ecombot.knowledge.facts import IDENTIFIER_KINDS, FactCheck, KnownFacts
from ecombot.knowledge.passage import Hit, Passage

DEFAULT_HANDOFF = ("I'm not sure about that one, so I have passed your question to our support team. "
                   "An agent will get back to you shortly.")
KNOWLEDGE_HEADER = "Store knowledge:"
QUESTION_HEADER = "Customer question:"
PASSAGE_CHARS = 600  # a long section is cut in the prompt (the search still saw all of it)
# A customer's first question that a stored Q&A pair asks in other words is answered with that pair's answer as the
# store wrote it, without the model: a 270M model rewording an answer that sits in its prompt loses facts and wording
# the stored answer has (grounded held-out facts 0.86-0.94, README Results). "Asks in other words": the cosine of the
# customer's question with the pair's question alone (Retriever.question_cosines; not the search score, which also
# embeds the pair's heading, so a store whose pairs carry no heading would be measured differently). The threshold
# (benchmarks/retrieval.py, "stored answers") is the lowest at which the reused answer had the question's intent and
# every fact of its reference for >= 97% of the built-in store's held-out questions (0.85: 141 of 145), raised to
# stay 0.05 above different questions of real FAQs whose answers differ (highest 0.84: "Can I return an item I
# bought in one of your stores to the website?" vs "Can I return an online order to one of your stores?"): 0.90,
# 106 of the 109 reused right (49% of 224). None of the 204 unseen-topic or 42 not-covered questions reaches it
# (highest 0.82 and 0.69).
# Product names weigh in the cosine: "Is my sofa covered by warranty?" scores 0.74 against "Is the pillow covered by
# warranty?", whose stored answer names the pillow. Follow-up turns ("how many days is that?") are never matched:
# the pair that says the same words may answer another conversation's first question.
REUSE_THRESHOLD = 0.90
STORED_ANSWER_NOTE = " (its stored answer, as written)"  # after the sources, wherever a stored answer is shown


def shown_text(passage: Passage) -> str:
    """The passage as a prompt shows it: a long one cut at a word, marked with an ellipsis."""
    text = passage.prompt_text
    return text if len(text) <= PASSAGE_CHARS else text[:PASSAGE_CHARS].rsplit(" ", 1)[0] + " …"


def passages_block(hits: list[Hit]) -> str:
    lines = [KNOWLEDGE_HEADER]
    for number, hit in enumerate(hits, start=1):
        lines.append(f"[{number}] {hit.passage.label}: {shown_text(hit.passage)}")
    return "\n".join(lines)


def ground_messages(messages: list[dict[str, str]], hits: list[Hit]) -> list[dict[str, str]]:
    """The conversation with the passages placed in its last user turn (earlier turns stay as they were said)."""
    out = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(out) if m["role"] == "user"), default=None)
    if last_user is None or not hits:
        return out
    out[last_user]["content"] = f"{passages_block(hits)}\n\n{QUESTION_HEADER} {out[last_user]['content']}"
    return out


def is_first_question(messages: list[dict[str, str]]) -> bool:
    """The customer has asked one thing so far: no earlier turn to follow up on."""
    return sum(m["role"] == "user" for m in messages) == 1


def latest_question(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _normalized(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def is_handoff(answer: str, handoff: str) -> bool:
    """True when a generated answer is the handoff: exactly, starting with its first sentence, or (for a handoff of
    several sentences) ending with its last one; a model rewords the opening ("We are not sure…") more often than
    the promise that an agent will reply."""
    answer, sentences = _normalized(answer), [_normalized(s) for s in re.split(r"(?<=[.!?])\s", handoff.strip())]
    sentences = [s for s in sentences if s]
    if not sentences or not answer:
        return False
    return answer.startswith(sentences[0]) or (len(sentences) > 1 and answer.endswith(sentences[-1]))


@dataclass
class Grounding:
    """A conversation ready for the model: `messages` carry the passages. `answer`, when set, is given without the
    model: the handoff (`covered` False) or the stored answer of the Q&A pair `reused`."""

    messages: list[dict[str, str]]
    hits: list[Hit] = field(default_factory=list)
    covered: bool = True
    reused: Hit | None = None
    reuse_cosine: float | None = None  # the customer's question against the reused pair's question
    answer: str | None = None

    @property
    def cited(self) -> list[Hit]:
        """The passages the answer comes from: the reused pair alone, else every passage shown to the model."""
        return [self.reused] if self.reused else self.hits

    @property
    def sources(self) -> list[dict]:
        """Where the answer came from (API responses, the store, reports); a reused pair is marked `reused`, with
        the question-to-question cosine that chose it (its `score` is the search's, which may weigh a heading)."""
        marked = {"reused": True, "reuse_cosine": round(self.reuse_cosine, 4)} if self.reused else {}
        return [{**hit.to_source(), **marked} for hit in self.cited]


class Grounder:
    """Retrieves k passages for each conversation's latest question and decides whether they cover it, and (with
    `reuse`, a cosine such as REUSE_THRESHOLD) whether a stored answer answers it as written.

    `retriever` is a `knowledge.Retriever` (search(queries, k, exclude) -> hits, covers(hits) -> bool,
    question_cosines(queries, pairs) -> the cosines stored answers are matched by). Training
    grounds its prompts without `reuse`: the model learns to answer from the passages, stored answers or not.
    `check_facts`: a generated answer may state only facts the store's knowledge or the conversation state
    (fact_check)."""

    def __init__(self, retriever, k: int = 3, handoff: str = DEFAULT_HANDOFF, reuse: float | None = None,
                 check_facts: bool = False):
        self.retriever, self.k, self.handoff, self.reuse = retriever, k, handoff, reuse
        # every fact the knowledge base and the handoff state, read once (100k passages: ~18 s on a 2-core Xeon)
        self.store_facts = KnownFacts([handoff, *(p.prompt_text for p in retriever.passages)],
                                      bare=False) if check_facts else None

    @property
    def check_facts(self) -> bool:
        return self.store_facts is not None

    def fact_check(self, grounding: Grounding) -> FactCheck | None:
        """The check a generated answer passes through (knowledge/facts.py), or None where nothing is checked: the
        check is off, the answer is given without the model, or no passage was found for it. Known: the passages
        shown, the bot's earlier answers, the identifiers the customer gave (an order number, an address), and
        every fact of the knowledge base. The whole base, not only what the search showed: the weights learnt the
        store's own answers, and checked against the passages shown alone the check also cut answers whose facts
        were right (README Results, "Fact check"). A value the store changed is caught once the base no longer
        states it."""
        if self.store_facts is None or grounding.answer is not None or not grounding.hits:
            return None
        said = [m for m in grounding.messages if m["role"] == "user"]
        customer = KnownFacts([m["content"] for m in said], self.store_facts, IDENTIFIER_KINDS, bare=False)
        shown = [hit.passage.prompt_text for hit in grounding.hits]
        shown += [m["content"] for m in grounding.messages if m["role"] == "assistant"]
        return FactCheck(KnownFacts(shown, customer), self.handoff, partial(is_handoff, handoff=self.handoff))

    def closest_pairs(self, conversations: list[list[dict[str, str]]],
                      results: list[list[Hit]]) -> list[tuple[Hit, float] | None]:
        """For each customer's first question that the hits cover, the Q&A pair found whose question is closest to
        it, with that question-to-question cosine (None without `reuse`: nothing is compared)."""
        found: list[tuple[Hit, float] | None] = [None] * len(conversations)
        if self.reuse is None:
            return found
        asks = [i for i, messages in enumerate(conversations) if is_first_question(messages)
                and self.retriever.covers(results[i]) and any(hit.passage.question for hit in results[i])]
        pairs = [[hit for hit in results[i] if hit.passage.question is not None] for i in asks]
        cosines = self.retriever.question_cosines([latest_question(conversations[i]) for i in asks],
                                                  [[hit.passage for hit in hits] for hits in pairs])
        for i, hits, scores in zip(asks, pairs, cosines):
            best = max(range(len(hits)), key=scores.__getitem__)
            found[i] = hits[best], scores[best]
        return found

    def _grounding(self, messages: list[dict[str, str]], hits: list[Hit],
                   closest: tuple[Hit, float] | None) -> Grounding:
        if not self.retriever.covers(hits):
            return Grounding(ground_messages(messages, hits), hits, covered=False, answer=self.handoff)
        if closest is None or closest[1] < self.reuse:
            return Grounding(ground_messages(messages, hits), hits)
        reused, cosine = closest
        return Grounding(ground_messages(messages, hits), hits, reused=reused, reuse_cosine=cosine,
                         answer=reused.passage.text)

    def ground_many(self, conversations: list[list[dict[str, str]]],
                    exclude: list[Callable[[Passage], bool] | None] | None = None) -> list[Grounding]:
        """`exclude[i]` drops passages for conversation i (evaluation: the test item's own pair)."""
        if not conversations:
            return []
        results = self.retriever.search([latest_question(m) for m in conversations], self.k, exclude)
        closest = self.closest_pairs(conversations, results)
        return [self._grounding(*grounded) for grounded in zip(conversations, results, closest)]

    def ground(self, messages: list[dict[str, str]]) -> Grounding:
        return self.ground_many([messages])[0]
