"""The store's knowledge base: its documents and Q&A pairs as passages, hybrid search over them, and the grounded
prompt every stage uses (see grounding.py)."""

from ecombot.knowledge.embeddings import embed
from ecombot.knowledge.grounding import (DEFAULT_HANDOFF, Grounder, Grounding, ground_messages, is_handoff,
                                         latest_question)
from ecombot.knowledge.passage import Hit, Passage

__all__ = ["DEFAULT_HANDOFF", "Grounder", "Grounding", "Hit", "Passage", "embed", "ground_messages", "is_handoff",
           "latest_question"]
