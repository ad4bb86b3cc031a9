"""Answer-quality metrics with 95% bootstrap confidence intervals.

Corpus BLEU and chrF come from sacrebleu; their intervals resample test items and recompute the
corpus score from sacrebleu's own per-sentence sufficient statistics (what `sacrebleu
--confidence` does), so the interval is for the corpus metric, not for an average of sentence scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

BOOTSTRAP_SAMPLES = 1000


@dataclass
class Estimate:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.low, self.high]}


def bootstrap_indices(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """One matrix of resampled item indices shared by all metrics and systems (paired resampling)."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def mean_estimate(values, indices: np.ndarray) -> Estimate:
    values = np.asarray(values, dtype=float)
    means = values[indices].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(values.mean()), float(low), float(high))


def resampled_corpus_estimate(statistics: np.ndarray, corpus_score: Callable[[list[float]], float],
                              indices: np.ndarray) -> Estimate:
    """A corpus metric and its interval: each resample scores the summed sufficient statistics of its items."""
    value = corpus_score(statistics.sum(axis=0).tolist())
    scores = [corpus_score(statistics[row].sum(axis=0).tolist()) for row in indices]
    low, high = np.percentile(scores, [2.5, 97.5])
    return Estimate(float(value), float(low), float(high))


def corpus_bleu(hypotheses: list[str], references: list[str], indices: np.ndarray) -> Estimate:
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    order = bleu.max_ngram_order
    # The score of a one-sentence corpus carries that sentence's sufficient statistics.
    sentences = [bleu.corpus_score([hyp], [[ref]]) for hyp, ref in zip(hypotheses, references)]
    statistics = np.array([[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in sentences], dtype=float)

    def corpus_score(summed: list[float]) -> float:
        return BLEU.compute_bleu(summed[2:2 + order], summed[2 + order:], int(summed[0]), int(summed[1]),
                                 bleu.smooth_method, bleu.smooth_value, bleu.effective_order, order).score

    return resampled_corpus_estimate(statistics, corpus_score, indices)


def corpus_chrf(hypotheses: list[str], references: list[str], indices: np.ndarray) -> Estimate:
    from sacrebleu.metrics import CHRF

    # Private sacrebleu methods (the ones `sacrebleu --confidence` uses): chrF's public scores carry no
    # per-sentence statistics, and no public function turns summed statistics into a score.
    chrf = CHRF()
    statistics = np.asarray(chrf._extract_corpus_statistics(hypotheses, [references]), dtype=float)
    return resampled_corpus_estimate(statistics, lambda summed: chrf._compute_score_from_stats(summed).score, indices)


def rouge_l(hypotheses: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure per item, on the 0-100 scale."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100.0 * scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two matrices of embeddings."""
    return (_unit(a) * _unit(b)).sum(axis=1)


def nearest_intents(answer_vectors: np.ndarray, pool_vectors: np.ndarray, pool_intents: list[str]) -> list[str]:
    """The intent of the pool reference closest to each answer (cosine)."""
    return [pool_intents[i] for i in (_unit(answer_vectors) @ _unit(pool_vectors).T).argmax(axis=1)]
