"""The store's knowledge as evaluation sees it: what the grounded systems search, and what an answer may state
without inventing it (the invented-fact rate)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable


from ecombot.config import EvalConfig
from ecombot.data import Conversation, normalise_text
from ecombot.data.builtin import policy_text
from ecombot.knowledge.facts import extract_facts
from ecombot.evaluate.slices import Edits, apply_edits
from ecombot.knowledge import (DEFAULT_HANDOFF, REUSE_THRESHOLD, Grounder, KnowledgeBase, Passage, Retriever, embed,
                               latest_question, passages_hash, recorded_pairs)
from ecombot.knowledge.search import dense_text
from ecombot.run_dir import RunDir


@dataclass
class StoreKnowledge:
    """`grounder` searches the knowledge base (None: no grounded system runs); `passages` are what the store told
    the systems: the knowledge base's, or without one the training pairs (and policy.md for the built-in data)."""

    passages: list[Passage]
    handoff: str = DEFAULT_HANDOFF
    grounder: Grounder | None = None
    info: dict = field(default_factory=dict)  # recorded in results.json

    @cached_property
    def facts(self) -> set[str]:
        return set().union(*(extract_facts(p.prompt_text) for p in self.passages))

    def edited(self, edits: Edits) -> StoreKnowledge:
        """The same knowledge after the store changed its documents (policy and training pairs alike); a passage
        whose searched text did not change keeps its vector."""
        if not edits:
            return self
        passages = [replace(p, text=apply_edits(p.text, edits),
                            question=apply_edits(p.question, edits) if p.question else p.question)
                    for p in self.passages]
        grounder = None
        if self.grounder:
            old = self.grounder.retriever
            vectors = old.vectors.copy()
            changed = [i for i, (a, b) in enumerate(zip(old.passages, passages)) if dense_text(a) != dense_text(b)]
            vectors[changed] = embed([dense_text(passages[i]) for i in changed])
            grounder = Grounder(Retriever(passages, vectors, old.threshold, old.document_threshold), self.grounder.k,
                               self.handoff, self.grounder.reuse, self.grounder.check_facts)
        return StoreKnowledge(passages, self.handoff, grounder, self.info)


def open_knowledge(cfg: EvalConfig, train: list[Conversation], builtin: bool, grounded: bool) -> StoreKnowledge:
    """The knowledge base named by cfg.knowledge (None: the first adapter's run record, else "default"), when
    grounded systems are asked for and it holds passages; k and the handoff come from the run record."""
    record = (RunDir(cfg.adapters[0]).live().knowledge() if cfg.adapters else None) or {}  # what answers
    name = cfg.knowledge or record.get("name") or "default"
    handoff = record.get("handoff") or DEFAULT_HANDOFF
    info = {"name": name}
    if grounded and name != "none":
        kb = KnowledgeBase(cfg.db or record.get("db"), name)
        info.update(db=kb.display_url, passages=0)
        if not kb.is_empty:
            pairs = recorded_pairs(record, name)  # the adapter's own training pairs, not other runs' (in_scope)
            retriever = kb.retriever(pairs_from=pairs)
            info.update(passages=len(retriever.passages), content_hash=passages_hash(retriever.passages))
            if record.get("name") == name:
                info["changed_since_training"] = record.get("content_hash") != info["content_hash"]
            reuse = REUSE_THRESHOLD if cfg.reuse_answers else None
            info["reuse_threshold"] = reuse
            return StoreKnowledge(retriever.passages, handoff,
                                  Grounder(retriever, record.get("k") or cfg.retrieval_k, handoff, reuse,
                                           cfg.check_facts), info)
    passages = [Passage("data: training split", "", 0, c.answer, c.question) for c in train]
    if builtin:
        passages.append(Passage("policy.md", "", 1, policy_text()))
    return StoreKnowledge(passages, handoff, info=info)


def own_pair(conv: Conversation) -> Callable[[Passage], bool]:
    """Matches the knowledge base's copy of a test item (same question and answer): a search must not find the
    item's own answer. Paraphrases with the same answer stay, as they stay in the retrieval baseline's pool."""
    question, answer = normalise_text(latest_question(conv.messages[:-1])), normalise_text(conv.answer)
    return lambda p: (p.question is not None and normalise_text(p.question) == question
                      and normalise_text(p.text) == answer)
