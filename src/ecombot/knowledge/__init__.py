"""The store's knowledge base: its documents and Q&A pairs as passages, hybrid search over them, and the grounded
prompt every stage uses (see grounding.py)."""

from ecombot.knowledge.base import (TRAINING_PAIRS, KnowledgeBase, SourceSummary, open_grounder, passages_hash,
                                    recorded_pairs, scope_of)
from ecombot.knowledge.chunking import qa_passages, read_passages
from ecombot.knowledge.embeddings import embed
from ecombot.knowledge.grounding import (DEFAULT_HANDOFF, REUSE_THRESHOLD, STORED_ANSWER_NOTE, Grounder, Grounding,
                                         ground_messages, is_handoff, latest_question)
from ecombot.knowledge.passage import Hit, Passage
from ecombot.knowledge.search import COVERAGE_THRESHOLD, Retriever

__all__ = ["COVERAGE_THRESHOLD", "DEFAULT_HANDOFF", "REUSE_THRESHOLD", "STORED_ANSWER_NOTE", "Grounder", "Grounding",
           "Hit", "KnowledgeBase", "Passage", "Retriever", "SourceSummary", "embed", "ground_messages", "is_handoff",
           "latest_question", "open_grounder", "qa_passages", "passages_hash", "read_passages", "recorded_pairs",
           "scope_of",
           "TRAINING_PAIRS"]
