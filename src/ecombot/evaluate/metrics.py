"""Answer-quality metrics with 95% bootstrap confidence intervals.

Corpus BLEU and chrF come from sacrebleu; their intervals resample test items and recompute the
corpus score from sacrebleu's own per-sentence sufficient statistics (what `sacrebleu
--confidence` does), so the interval is for the corpus metric, not for an average of sentence scores.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _corpus_estimate(metric, hypotheses: list[str], references: list[str], indices: np.ndarray) -> Estimate:
    stats = np.asarray(metric._extract_corpus_statistics(hypotheses, [references]), dtype=float)
    value = metric._compute_score_from_stats(stats.sum(axis=0).tolist()).score
    scores = [metric._compute_score_from_stats(stats[row].sum(axis=0).tolist()).score for row in indices]
    low, high = np.percentile(scores, [2.5, 97.5])
    return Estimate(float(value), float(low), float(high))


def corpus_bleu(hypotheses: list[str], references: list[str], indices: np.ndarray) -> Estimate:
    from sacrebleu.metrics import BLEU

    return _corpus_estimate(BLEU(), hypotheses, references, indices)


def corpus_chrf(hypotheses: list[str], references: list[str], indices: np.ndarray) -> Estimate:
    from sacrebleu.metrics import CHRF

    return _corpus_estimate(CHRF(), hypotheses, references, indices)


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
