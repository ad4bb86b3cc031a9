"""Retrieval-augmented fine-tuning (RAFT-style): every training conversation is shown the passages the knowledge base
returns for its question, in the prompt layout chat, serve and evaluate use (knowledge/grounding.py).

Four rules make the model read passages instead of reciting: a passage that carries the example's own answer (its
own Q&A pair, or a paraphrase with the same answer) is never shown; where the base holds documents (policy or help
pages), half of the examples are shown documents only, so the model practises putting an answer together from the
store's own text (what it needs for a topic its training data never covered, or a policy changed after training);
in a share of the examples the numbers the answer shares with its passages are changed in both (a 30-day window
becomes 60 days, $4.95 becomes $9.90), so the values can only come from the passages, never from memory; and a
share of the examples get only another question's passages with the store's handoff answer as their target, so the
model learns to hand over rather than invent when the passages do not answer the question. Opt-in (`rule_share`),
a share answers with the line of a store document that states its answer, its own topic's Q&A pairs hidden (below).
A last share is shown no passages at all, as `--knowledge none` asks (chat, serve, evaluate's "fine-tuned" system, an
export prompted without passages): a model that only ever saw passages reads their absence as "not covered" and hands
over or rambles (on a support log a third of its answers were handoffs; README, Results, "Prompts without passages").
The validation split gets the same shares, so its loss (and the checkpoint it keeps) weighs them as training does.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ecombot.catalog.knowledge import CATALOG_SOURCE
from ecombot.catalog.questions import PRODUCT_QUESTIONS
from ecombot.data import Conversation, normalise_text
from ecombot.errors import EcombotError
from ecombot.knowledge import (DEFAULT_HANDOFF, TRAINING_PAIRS, Grounder, Grounding, Hit, KnowledgeBase, Passage,
                               embed, ground_messages, passages_hash, qa_passages)
from ecombot.knowledge.grounding import is_first_question, shown_text


DOCUMENTS_ONLY_SHARE = 0.5
# Why: when a store's answers are predictable from the question (a fixed reply per topic, as in the built-in data),
# a model trained on grounded prompts learns to recite and ignore its passages; with an edited policy it then states
# the old value. Examples whose facts exist only in their passages make reading the cheaper way to a low loss.
FACT_EDIT_SHARE = 0.3
# rule_share (config, default 0): why and how much, measured (README Results, "The document's own rule"): a model
# trained only on the store's answers answers a topic its data never covered with a neighbouring topic's answer; an
# example whose passages hold no pair of its own topic and whose target is the document line stating its answer can
# only be learnt by reading. A line states the answer when its MiniLM cosine with the stored answer reaches
# RULE_COSINE; the RULE_LINES closest such lines are the target.
RULE_COSINE = 0.5
RULE_LINES = 2
# A number as a store states it ("30" days, "$4.95", "2" pm, "1"-year, "10"%), not a piece of a code, word or address.
NUMBER = re.compile(r"(?<![\w.,/@])\d{1,4}(?:\.\d{1,2})?(?![\w@/]|[.,]\d)")


@dataclass
class GroundedData:
    train: list[Conversation]
    validation: list[Conversation]
    record: dict  # run_config.json "knowledge": what chat, serve and evaluate need to ground answers the same way
    summary: str  # one line for the console


def training_source(data_path: str) -> str:
    return f"{TRAINING_PAIRS}{Path(data_path).name}"


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


def topic_filter(conv: Conversation, topic_answers: dict[str, set[str]]):
    """Rejects what `own_answer_filter` rejects and, for a conversation with an intent, every Q&A pair of that intent
    (its heading) or with one of its answers: the example stands for a topic the training data never covered."""
    own = own_answer_filter(conv)
    if conv.intent is None:
        return own
    answers = topic_answers.get(conv.intent, set())
    return lambda passage: own(passage) or (passage.question is not None and (
        passage.heading == conv.intent or normalise_text(passage.text) in answers))


def states_rules(passage: Passage) -> bool:
    """A store document (policy or help page), not a Q&A pair nor a catalog's product."""
    return passage.question is None and not passage.source.startswith(CATALOG_SOURCE)


def document_lines(hits: list[Hit]) -> list[str]:
    """The lines of the store documents among the hits as the prompt shows them (a long passage is cut), each once."""
    return list(dict.fromkeys(line for hit in hits if states_rules(hit.passage)
                              for line in shown_text(hit.passage).split("\n") if not line.endswith(" …")))


def rule_target(answer_vector, hits: list[Hit], line_vectors: dict[str, object]) -> str | None:
    """The document line(s) among the hits that state the answer (RULE_COSINE, RULE_LINES), closest first, without
    their list marks; None when none does."""
    scored = sorted(((float(line_vectors[line] @ answer_vector), line) for line in document_lines(hits)),
                    key=lambda pair: -pair[0])
    kept = [line.removeprefix("- ").strip() for cosine, line in scored[:RULE_LINES] if cosine >= RULE_COSINE]
    return " ".join(kept) or None


def scaled_number(value: str, factor: int) -> str:
    """`value` times `factor`, written the same way (decimal places, leading zeros: "4.95" -> "9.90", "00" -> "00")."""
    if "." in value:
        return f"{float(value) * factor:.{len(value.split('.')[1])}f}"
    return f"{int(value) * factor:0{len(value)}d}" if value.startswith("0") else str(int(value) * factor)


def edit_facts(answer: str, hits: list[Hit], factor: int) -> tuple[str, list[Hit]] | None:
    """The answer and its passages with every number they share multiplied by `factor`; None if they share none
    (the answer's other numbers, and the question, stay as they are)."""
    shown = {m.group() for hit in hits for m in NUMBER.finditer(hit.passage.prompt_text)}
    shared = {m.group() for m in NUMBER.finditer(answer)} & shown
    if not shared:
        return None

    def edit(text: str | None) -> str | None:
        return NUMBER.sub(lambda m: scaled_number(m.group(), factor) if m.group() in shared else m.group(),
                          text) if text else text
    return edit(answer), [replace(hit, passage=replace(hit.passage, text=edit(hit.passage.text),
                                                       question=edit(hit.passage.question))) for hit in hits]


def ground_split(convs: list[Conversation], grounder: Grounder, handoff_share: float, seed: int,
                 documents_only_share: float = DOCUMENTS_ONLY_SHARE,
                 fact_edit_share: float = FACT_EDIT_SHARE, ungrounded_share: float = 0.0,
                 rule_share: float = 0.0) -> list[Conversation]:
    """A seeded `ungrounded_share` of the conversations (product questions aside) left as they were (no passages,
    their own answer, nothing retrieved for them); each other one with passages in its last question, a seeded
    `fact_edit_share` of those with the numbers their answer shares with the passages changed in both, and a seeded
    `handoff_share` with another grounded conversation's passages (a different answer, and a different intent where
    both have one) and the handoff. Where the base holds documents, a seeded `rule_share` is searched without its
    own topic's pairs (topic_filter) and answers with the document line(s) stating its answer (rule_target; where
    none is shown, it stays an ordinary example); fact edits apply to these too."""
    rng, facts_rng, plain_rng = random.Random(seed), random.Random(f"{seed}-facts"), random.Random(f"{seed}-plain")
    rule_rng = random.Random(f"{seed}-rules")
    # never a product question: without its product's passage it could only be answered by inventing the value
    plain = [plain_rng.random() < ungrounded_share and c.category != PRODUCT_QUESTIONS for c in convs]
    has_documents = any(p.question is None for p in grounder.retriever.passages)
    documents_only = [has_documents and rng.random() < documents_only_share for _ in convs]
    # A customer's single question, not a product question (its answer is its product's value, not a store rule),
    # nor an agent's correction that `emphasis` repeats: the user asked for those words to be learnt.
    has_rules = rule_share > 0 and any(states_rules(p) for p in grounder.retriever.passages)
    rules = [has_rules and rule_rng.random() < rule_share and not skip and c.category != PRODUCT_QUESTIONS
             and not c.meta.get("emphasised") and is_first_question(c.messages[:-1]) for c, skip in zip(convs, plain)]
    topic_answers: dict[str, set[str]] = {}
    for c in convs if has_rules else ():  # only rule examples hide their topic
        if c.intent is not None:
            topic_answers.setdefault(c.intent, set()).add(normalise_text(c.answer))

    def ordinary(i: int):
        return is_qa_pair if documents_only[i] else own_answer_filter(convs[i])

    grounded = [i for i, skip in enumerate(plain) if not skip]
    found = iter(grounder.ground_many([convs[i].messages[:-1] for i in grounded],
                                      [topic_filter(convs[i], topic_answers) if rules[i] else ordinary(i)
                                       for i in grounded]))
    groundings: list[Grounding | None] = [None if skip else next(found) for skip in plain]
    targets = rule_targets(convs, groundings, rules)
    unstated = [i for i in range(len(convs)) if rules[i] and targets[i] is None]
    if unstated:  # no document line shown states the answer: an ordinary example, searched as one
        regrounded = grounder.ground_many([convs[i].messages[:-1] for i in unstated], [ordinary(i) for i in unstated])
        for i, grounding in zip(unstated, regrounded):
            groundings[i] = grounding
    out = []
    for i, (conv, grounding) in enumerate(zip(convs, groundings)):
        if grounding is None:
            out.append(replace(conv, meta={**conv.meta, "grounded": False}))
            continue
        messages, meta = grounding.messages + [conv.messages[-1]], {**conv.meta, "grounded": True}
        if targets[i] is not None:
            messages, meta["rule"] = grounding.messages + [{"role": "assistant", "content": targets[i]}], True
        if facts_rng.random() < fact_edit_share:
            edited = edit_facts(messages[-1]["content"], grounding.hits, facts_rng.choice((2, 3)))
            if edited is not None:
                messages = ground_messages(conv.messages[:-1], edited[1]) + [
                    {"role": "assistant", "content": edited[0]}]
                meta["facts_edited"] = True
        if len(grounded) > 1 and rng.random() < handoff_share:
            other = distractor_source(convs, i, rng, candidates=grounded)
            if other is not None:
                hits = [h for h in groundings[other].hits if not own_answer_filter(conv)(h.passage)]
                messages = ground_messages(conv.messages[:-1], hits) + [
                    {"role": "assistant", "content": grounder.handoff}]
                meta.pop("facts_edited", None)
                meta.pop("rule", None)
        out.append(replace(conv, messages=messages, meta=meta))
    return out


def rule_targets(convs: list[Conversation], groundings: list[Grounding | None],
                 rules: list[bool]) -> list[str | None]:
    """rule_target of each conversation drawn for one (None for the others), embedding each line and answer once."""
    drawn = [i for i, rule in enumerate(rules) if rule]
    if not drawn:
        return [None] * len(convs)
    lines = sorted({line for i in drawn for line in document_lines(groundings[i].hits)})
    line_vectors = dict(zip(lines, embed(lines)))
    answers = embed([convs[i].answer for i in drawn])
    targets: list[str | None] = [None] * len(convs)
    for i, answer in zip(drawn, answers):
        targets[i] = rule_target(answer, groundings[i].hits, line_vectors)
    return targets


def distractor_source(convs: list[Conversation], i: int, rng: random.Random, candidates: list[int],
                      tries: int = 20) -> int | None:
    """Another of the `candidates` (the grounded conversations) whose passages answer something else."""
    conv = convs[i]
    for _ in range(tries):
        j = rng.choice(candidates)
        other = convs[j]
        same_intent = conv.intent is not None and conv.intent == other.intent
        if j != i and not same_intent and normalise_text(other.answer) != normalise_text(conv.answer):
            return j
    return None


def replaced_note(source: str) -> str:
    """Said when this run's pairs replace different ones of the same name: a run of another store that trained on a
    file of that name reads these from now on."""
    return (f" replacing the earlier {source}: a run that trained on another file of this name reads these now; "
            "give each store its own base with --knowledge NAME")


def wait_for_source(base: KnowledgeBase, source: str, passages: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(s.name == source and s.passages == passages for s in base.sources()):
        if time.monotonic() > deadline:
            raise EcombotError(f"knowledge base: the main process did not index {source} within {timeout_s:.0f} s")
        time.sleep(0.5)


def ground_training_data(train: list[Conversation], validation: list[Conversation], data_path: str,
                         name: str, db: str | None, k: int, handoff_share: float, handoff: str | None,
                         seed: int, *, ungrounded_share: float = 0.0, rule_share: float = 0.0, index: bool = True,
                         inherited: list[str] | None = None,
                         documents: list[tuple[str, list[Passage]]] = ()) -> GroundedData:
    """Index the training split's Q&A pairs in the knowledge base `name` (replacing this file's earlier ones; never
    the validation or test pairs), then ground both splits. The run reads the base's documents, its own pairs and
    `inherited` (the pairs its parent adapter read: `ecombot learn`), never another run's (knowledge.base.in_scope);
    None: a parent recorded before scopes, which read every pair. `documents` (source, passages): added to the base
    first (a support run's catalog). `index=False` (the extra processes of a distributed run) waits until the main
    process has written them, so every process grounds from the same passages. Product questions
    (catalog/questions.py) are not indexed as pairs: another product's pair would answer for the wrong product."""
    base = KnowledgeBase(db, name)
    for document, passages in documents:
        if index:
            base.add_passages(document, passages, kind="document")
        else:
            wait_for_source(base, document, len(passages))
    source = training_source(data_path)
    own = None if inherited is None else list(dict.fromkeys([*inherited, source]))
    # A pair the run reads already under another source (`ecombot learn` replays earlier training data) is not
    # added twice: a search shows it once anyway (Retriever._distinct), a copy would only be embedded and stored.
    held = {p.key for p in base.passages(own) if p.question is not None and p.source != source}
    pairs = [p for p in qa_passages([c for c in train if c.category != PRODUCT_QUESTIONS], source)
             if p.key not in held]
    if index:
        added = base.add_passages(source, pairs)
    else:
        wait_for_source(base, source, len(pairs))
        added = None
    grounder = Grounder(base.retriever(pairs_from=own), k=k, handoff=handoff or DEFAULT_HANDOFF)
    shares = {"ungrounded_share": ungrounded_share, "rule_share": rule_share}
    grounded_train = ground_split(train, grounder, handoff_share, seed, **shares)
    grounded_val = ground_split(validation, grounder, handoff_share, seed + 1, **shares)
    sources = base.sources(own)
    passages = sum(s.passages for s in sources)
    others = [s for s in base.sources() if s.name not in {t.name for t in sources}]
    record = {"name": name, "db": base.display_url, "k": k, "handoff": grounder.handoff,
              "content_hash": passages_hash(grounder.retriever.passages), "passages": passages,
              "handoff_share": handoff_share, "ungrounded_share": ungrounded_share, "rule_share": rule_share,
              "fact_edit_share": FACT_EDIT_SHARE, "pairs": own,
              "threshold": grounder.retriever.threshold, "sources": [s.name for s in sources]}
    handoffs = sum(c.answer == grounder.handoff for c in grounded_train)
    edited = sum(bool(c.meta.get("facts_edited")) for c in grounded_train)
    plain = sum(not c.meta.get("grounded") for c in grounded_train)
    rules = sum(bool(c.meta.get("rule")) for c in grounded_train)
    if rule_share:
        record["rule_examples"] = rules  # what the share gave: only examples shown a line stating their answer
    documents = [s.name for s in sources if not s.name.startswith(TRAINING_PAIRS)]
    summary = (f"knowledge base '{name}': {passages} passages ({len(pairs)} training Q&A "
               f"pairs{replaced_note(source) if added and added.status == 'replaced' else ''}; "
               f"documents: {', '.join(documents) or 'none — add policy pages with `ecombot knowledge add`'})"
               f", {k} per prompt; {handoffs} training conversations teach the handoff, {edited} read edited "
               f"numbers from their passages, {plain} see no passages (as --knowledge none answers)"
               + (f", {rules} answer with the document rule stating their answer, their topic's pairs hidden"
                  + ("" if rules else " (none: no store document among their passages states it)")
                  if rule_share else "")
               + (f"; left out: {sum(s.passages for s in others)} Q&A pairs other training runs added "
                  f"({', '.join(s.name for s in others)}), this run reads its own" if others else ""))
    return GroundedData(grounded_train, grounded_val, record, summary)
