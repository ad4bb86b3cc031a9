"""Hybrid search: BM25 (bm25s) for the exact words a customer uses (an order page, "Klarna", "PDF"), dense MiniLM
embeddings in a faiss index for paraphrases ("money back" ~ "refund").

Order: reciprocal-rank fusion (1/(60 + rank) summed over the two rankings). BM25 scores and cosines live on
unrelated scales (BM25 grows with the query's length and the corpus' term statistics), so only their ranks are
comparable; RRF needs no weights tuned per corpus.

Coverage: `Hit.score` is the dense cosine between the question and the passage. Unlike a BM25 or RRF score it is
absolute (it does not depend on how many passages the base holds or on which other passages match), so one
threshold calibrated on one store carries over to another store's FAQ; benchmarks/retrieval.py measures it."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Callable

import numpy as np

from ecombot.errors import EcombotError
from ecombot.knowledge.embeddings import embed
from ecombot.knowledge.passage import Hit, Passage

# Calibrated by benchmarks/retrieval.py. A question is compared with a stored question (a Q&A pair) or with a
# paragraph of a document, and the two cosines live on different scales: on the built-in data a covered question's
# best Q&A pair scores 0.5+ for ~96% of questions, its best policy paragraph only 0.38 (median). So each kind of
# passage has its own threshold; a question is covered when any passage found reaches its kind's. Measured (stop 22):
# on the Q&A pairs alone (a generic FAQ) 3.1% of the held-out questions are handed off and 86% of not-covered ones
# caught; on policy.md alone 4.9% of the unseen-topic questions handed off. Questions in between reach the model,
# which training taught to hand over when its passages do not answer (train/grounding.py).
COVERAGE_THRESHOLD = 0.5
DOCUMENT_THRESHOLD = 0.2
RRF_K = 60  # the constant of Cormack et al. (2009): damps the difference between the very first ranks
CANDIDATES = 50  # per signal; fusion and exclusion work on the union of both signals' candidates


def dense_text(passage: Passage) -> str:
    """What a passage's vector encodes: its own heading (not the whole path: a document title repeated in every
    passage pulls all their vectors together) and, for a Q&A pair, the question (questions match questions better
    than answers do), else its text."""
    heading = passage.heading.rsplit(" > ", 1)[-1]
    return "\n".join(part for part in (heading, passage.question or passage.text) if part)


def lexical_text(passage: Passage) -> str:
    return "\n".join(part for part in (passage.question, passage.heading, passage.text) if part)


def _reciprocal_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """1/(RRF_K + rank) for each value in descending order; entries where `counts` is False get nothing."""
    ranks = np.empty(len(values))
    ranks[np.argsort(-values, kind="stable")] = np.arange(1, len(values) + 1)
    return np.where(counts, 1.0 / (RRF_K + ranks), 0.0)


def _fused_order(dense: np.ndarray, lexical: np.ndarray) -> np.ndarray:
    """Indices best first by reciprocal-rank fusion of the two signals (BM25 counts only where it matched); ties
    go to the higher cosine."""
    fused = _reciprocal_ranks(dense, np.ones(len(dense), dtype=bool)) + _reciprocal_ranks(lexical, lexical > 0)
    return np.lexsort((-dense, -fused))


class Retriever:
    """Search over a fixed list of passages. `vectors` are the passages' embeddings of `dense_text` (a knowledge
    base stores them, so opening it does not embed again); computed here when not given."""

    def __init__(self, passages: list[Passage], vectors: np.ndarray | None = None,
                 threshold: float = COVERAGE_THRESHOLD, document_threshold: float = DOCUMENT_THRESHOLD):
        import bm25s
        import faiss
        import Stemmer

        # bm25s sets its logger to DEBUG when imported, so once anything configures the root handler it prints
        # "Building index from IDs objects" on every index build.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self.passages, self.threshold, self.document_threshold = list(passages), threshold, document_threshold
        if vectors is None:
            vectors = embed([dense_text(p) for p in self.passages])
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(self.passages), -1)
        if len(self.passages) and self.vectors.shape[1] != embed(["dimension"]).shape[1]:
            raise EcombotError(f"passage vectors have {self.vectors.shape[1]} dimensions; the embedding model gives "
                               f"{embed(['dimension']).shape[1]} (re-add the files to embed them again)")
        # Vectors of the latest search's queries (replaced whole: a thread reading it sees one search's or the next
        # one's); stored answers are matched by them (question_cosines).
        self.asked: dict[str, np.ndarray] = {}
        self.index = faiss.IndexFlatIP(self.vectors.shape[1] or 384)  # exact inner product = cosine on unit vectors
        self.index.add(self.vectors)
        documents = np.array([p.question is None for p in self.passages], dtype=bool)
        # The document slot is for a base that mixes both kinds; in one of a single kind every hit is of it already.
        self.document_ids = np.flatnonzero(documents) if 0 < documents.sum() < len(self.passages) else None
        self.document_vectors = self.vectors[self.document_ids] if self.document_ids is not None else None
        self.tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))
        self.bm25 = bm25s.BM25()
        if self.passages:
            corpus = self.tokenizer.tokenize([lexical_text(p) for p in self.passages], update_vocab=True,
                                             return_as="tuple", show_progress=False)
            self.bm25.index(corpus, show_progress=False)

    def search(self, queries: list[str], k: int,
               exclude: list[Callable[[Passage], bool] | None] | None = None) -> list[list[Hit]]:
        """The k best passages per query, best first, each saying something the others do not (`Passage.key`; fewer
        than k only where the base holds fewer); `exclude[i]` returning True drops a passage for query i."""
        if not queries:
            return []
        if not self.passages:
            return [[] for _ in queries]
        vectors = embed(list(queries)).astype(np.float32)
        self.asked = dict(zip(queries, vectors))
        empty = self.tokenizer.word_to_id.get("")  # what a query of stopwords only becomes
        tokens = self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)
        rejects = exclude or [None] * len(queries)
        return [self._search_one(vector, [t for t in ids if t != empty], k, reject)
                for vector, ids, reject in zip(vectors, tokens, rejects)]

    def _search_one(self, vector: np.ndarray, token_ids: list[int], k: int,
                    reject: Callable[[Passage], bool] | None) -> list[Hit]:
        n = len(self.passages)
        lexical = self.bm25.get_scores_from_ids(token_ids) if token_ids else np.zeros(n, dtype=np.float32)
        fetch = min(n, max(CANDIDATES, 4 * k))
        while True:  # widen the candidate pool until exclusion leaves k (or every passage was seen)
            dense_ids = self._nearest(vector, fetch)
            lexical_ids = np.argpartition(-lexical, fetch - 1)[:fetch] if fetch < n else np.arange(n)
            candidates = np.union1d(dense_ids[dense_ids >= 0], lexical_ids)
            if reject is not None:
                candidates = np.array([c for c in candidates if not reject(self.passages[c])], dtype=np.int64)
            if fetch == n or len({self.passages[c].key for c in candidates}) >= k:
                break
            fetch = min(n, fetch * 4)
        dense = self.vectors[candidates] @ vector
        lexical_here = lexical[candidates]
        best_lexical = float(lexical.max()) if n else 0.0
        order = self._distinct(candidates, _fused_order(dense, lexical_here), k)
        ids, dense_of = [int(candidates[i]) for i in order], [float(dense[i]) for i in order]
        document = self._document_for_slot(vector, lexical, k, ids, reject)
        if document is not None:
            ids[-1], dense_of[-1] = document
        return [Hit(self.passages[i], score, dense=score,
                    lexical=float(lexical[i]) / best_lexical if best_lexical > 0 else 0.0)
                for i, score in zip(ids, dense_of)]

    def _distinct(self, candidates: np.ndarray, order: np.ndarray, k: int) -> list[int]:
        """The first k positions of `order` whose passages say different things (Passage.key): a repeat would take
        a second of the k places (measured on the built-in store: 19 of 128 evaluated prompts showed the same Q&A
        pair twice, a follow-up that recurs across conversations)."""
        seen, kept = set(), []
        for i in order:
            key = self.passages[candidates[i]].key
            if key not in seen:
                seen.add(key)
                kept.append(int(i))
                if len(kept) == k:
                    break
        return kept

    def _document_for_slot(self, vector: np.ndarray, lexical: np.ndarray, k: int, ids: list[int],
                           reject: Callable[[Passage], bool] | None) -> tuple[int, float] | None:
        """The best document passage, to take the last of k places when the hits hold none, if it is close enough
        to count as covering (`document_threshold`).

        Why: in a base holding a store's policy pages and its FAQ or past answers, Q&A pairs on neighbouring topics
        outrank the one policy paragraph that answers a new topic (question-to-question cosines run higher than
        question-to-paragraph ones): on the built-in store's held-out intents the right policy section was among
        the top 3 for 8 of 36 questions, and the best document found was the right section for nearly all of them
        (benchmarks/retrieval.py). Documents are ranked among themselves by the same fusion."""
        if self.document_ids is None or k < 2 or any(self.passages[i].question is None for i in ids):
            return None
        docs, dense = self.document_ids, self.document_vectors @ vector
        if reject is not None:
            kept = np.array([not reject(self.passages[i]) for i in docs], dtype=bool)
            docs, dense = docs[kept], dense[kept]
        if not len(docs):
            return None
        best = int(_fused_order(dense, lexical[docs])[0])
        return (int(docs[best]), float(dense[best])) if dense[best] >= self.document_threshold else None

    def _nearest(self, vector: np.ndarray, fetch: int) -> np.ndarray:
        """The `fetch` passages nearest to one query vector, scanned on one thread: for a single query OpenMP's
        threads cost more than they save (100k passages: 13 ms on one core, 51 ms on two busy ones)."""
        import faiss

        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(vector[None], fetch)[1][0]
        finally:
            faiss.omp_set_num_threads(threads)

    @cached_property
    def question_vectors(self) -> dict[str, np.ndarray]:
        """Vectors of Q&A pairs' questions alone, seeded with the pairs indexed by their question already (no
        heading); built on first use: only a grounder that reuses stored answers asks (training never does)."""
        return {p.question: v for p, v in zip(self.passages, self.vectors)
                if p.question is not None and dense_text(p) == p.question}

    def question_cosines(self, queries: list[str], pairs: list[list[Passage]]) -> list[list[float]]:
        """The cosine of each query with the question alone of each of its Q&A pairs (no heading, unlike the
        search): how a stored answer is matched, one measure whether a store's pairs carry a heading or not.
        Embeds only what it has not seen: the latest search's queries and the pairs' questions are kept (a pair
        without a heading is indexed by its question already), so a served question costs ~0-20 ms more, not 35."""
        asked, known = self.asked, self.question_vectors
        new_questions = sorted({p.question for ps in pairs for p in ps if p.question not in known})
        new_queries = sorted({q for q in queries if q not in asked})
        if new_questions or new_queries:
            vectors = embed(new_questions + new_queries)
            known.update(zip(new_questions, vectors[:len(new_questions)]))
            asked = {**asked, **dict(zip(new_queries, vectors[len(new_questions):]))}
        return [[float(known[p.question] @ asked[q]) for p in ps] for q, ps in zip(queries, pairs)]

    def threshold_for(self, passage: Passage) -> float:
        return self.threshold if passage.question is not None else self.document_threshold

    def covers(self, hits: list[Hit]) -> bool:
        """Whether a passage found is close enough to the question to answer it (else: hand off)."""
        return any(hit.score >= self.threshold_for(hit.passage) for hit in hits)
