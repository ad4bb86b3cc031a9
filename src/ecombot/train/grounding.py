"""Retrieval-augmented fine-tuning (RAFT-style): every training conversation is shown the passages the knowledge base
returns for its question, in the prompt layout chat, serve and evaluate use (knowledge/grounding.py).

Three rules make the model read passages instead of reciting: a passage that carries the example's own answer (its
own Q&A pair, or a paraphrase with the same answer) is never shown; where the base holds documents (policy or help
pages), half of the examples are shown documents only, so the model practises putting an answer together from the
store's own text (what it needs for a topic its training data never covered, or a policy changed after training);
and a share of the examples get only another question's passages with the store's handoff answer as their target,
so the model learns to hand over rather than invent when the passages do not answer the question.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ecombot.data import Conversation, normalise_text
from ecombot.errors import EcombotError
from ecombot.knowledge import DEFAULT_HANDOFF, Grounder, KnowledgeBase, Passage, ground_messages, qa_passages


DOCUMENTS_ONLY_SHARE = 0.5


@dataclass
class GroundedData:
    train: list[Conversation]
    validation: list[Conversation]
    record: dict  # run_config.json "knowledge": what chat, serve and evaluate need to ground answers the same way
    summary: str  # one line for the console


def training_source(data_path: str) -> str:
    return f"data: {Path(data_path).name}"


def own_answer_filter(conv: Conversation):
    """Rejects passages that would hand the example its answer: same answer, or the same question."""
    answer, question = normalise_text(conv.answer), normalise_text(conv.question)

    def rejects(passage: Passage) -> bool:
        return normalise_text(passage.text) == answer or (
            passage.question is not None and normalise_text(passage.question) == question)
    return rejects


def is_qa_pair(passage: Passage) -> bool:
    """What a documents-only example rejects: it is answered from the store's documents alone."""
    return passage.question is not None


def ground_split(convs: list[Conversation], grounder: Grounder, handoff_share: float, seed: int,
                 documents_only_share: float = DOCUMENTS_ONLY_SHARE) -> list[Conversation]:
    """Each conversation with passages in its last question; a seeded `handoff_share` of them get another
    conversation's passages (a different answer, and a different intent where both have one) and the handoff."""
    rng = random.Random(seed)
    has_documents = any(p.question is None for p in grounder.retriever.passages)
    documents_only = [has_documents and rng.random() < documents_only_share for _ in convs]
    groundings = grounder.ground_many([c.messages[:-1] for c in convs],
                                      [is_qa_pair if only else own_answer_filter(c)
                                       for c, only in zip(convs, documents_only)])
    out = []
    for i, (conv, grounding) in enumerate(zip(convs, groundings)):
        messages = grounding.messages + [conv.messages[-1]]
        if len(convs) > 1 and rng.random() < handoff_share:
            other = distractor_source(convs, i, rng)
            if other is not None:
                hits = [h for h in groundings[other].hits if not own_answer_filter(conv)(h.passage)]
                messages = ground_messages(conv.messages[:-1], hits) + [
                    {"role": "assistant", "content": grounder.handoff}]
        out.append(replace(conv, messages=messages, meta={**conv.meta, "grounded": True}))
    return out


def distractor_source(convs: list[Conversation], i: int, rng: random.Random, tries: int = 20) -> int | None:
    conv = convs[i]
    for _ in range(tries):
        j = rng.randrange(len(convs))
        other = convs[j]
        same_intent = conv.intent is not None and conv.intent == other.intent
        if j != i and not same_intent and normalise_text(other.answer) != normalise_text(conv.answer):
            return j
    return None


def wait_for_source(base: KnowledgeBase, source: str, passages: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(s.name == source and s.passages == passages for s in base.sources()):
        if time.monotonic() > deadline:
            raise EcombotError(f"knowledge base: the main process did not index {source} within {timeout_s:.0f} s")
        time.sleep(0.5)


def ground_training_data(train: list[Conversation], validation: list[Conversation], data_path: str,
                         name: str, db: str | None, k: int, handoff_share: float, handoff: str | None,
                         seed: int, index: bool = True) -> GroundedData:
    """Index the training split's Q&A pairs in the knowledge base `name` (replacing this file's earlier ones; never
    the validation or test pairs), then ground both splits. `index=False` (the extra processes of a distributed
    run) waits until the main process has written them, so every process grounds from the same passages."""
    base = KnowledgeBase(db, name)
    source, pairs = training_source(data_path), qa_passages(train, training_source(data_path))
    if index:
        base.add_passages(source, pairs)
    else:
        wait_for_source(base, source, len(pairs))
    grounder = Grounder(base.retriever(), k=k, handoff=handoff or DEFAULT_HANDOFF)
    grounded_train = ground_split(train, grounder, handoff_share, seed)
    grounded_val = ground_split(validation, grounder, handoff_share, seed + 1)
    sources = base.sources()
    passages = sum(s.passages for s in sources)
    record = {"name": name, "db": base.display_url, "k": k, "handoff": grounder.handoff,
              "content_hash": base.content_hash(), "passages": passages, "handoff_share": handoff_share,
              "threshold": grounder.retriever.threshold, "sources": [s.name for s in sources]}
    handoffs = sum(c.answer == grounder.handoff for c in grounded_train)
    documents = [s.name for s in sources if s.name != training_source(data_path)]
    summary = (f"knowledge base '{name}': {passages} passages ({len(pairs)} training Q&A "
               f"pairs; documents: {', '.join(documents) or 'none — add policy pages with `ecombot knowledge add`'})"
               f", {k} per prompt; {handoffs} training conversations teach the handoff")
    return GroundedData(grounded_train, grounded_val, record, summary)
