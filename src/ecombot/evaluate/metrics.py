"""Answer-quality metrics with 95% bootstrap confidence intervals.

Corpus BLEU and chrF come from sacrebleu; their intervals resample test items and recompute the
corpus score from sacrebleu's own per-sentence sufficient statistics (what `sacrebleu
--confidence` does), so the interval is for the corpus metric, not for an average of sentence scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ecombot.knowledge.facts import extract_facts, facts_by_kind, plain_number

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


# --- facts: what a grounded answer must get exactly right (extracted by knowledge/facts.py) --------------------


def fact_accuracy(answers: list[str], references: list[str]) -> list[float | None]:
    """Per item: the share of the reference's facts the answer states; None when the reference states none."""
    out = []
    for answer, reference in zip(answers, references):
        wanted = extract_facts(reference)
        out.append(len(wanted & extract_facts(answer)) / len(wanted) if wanted else None)
    return out


def invented_fact_rate(answers: list[str], references: list[str], knowledge: set[str]) -> list[float | None]:
    """Per item: the share of the answer's facts found neither in the reference nor in `knowledge` (the facts of
    everything the store told the system); None when the answer states none."""
    out = []
    for answer, reference in zip(answers, references):
        stated = extract_facts(answer)
        out.append(len(stated - extract_facts(reference) - knowledge) / len(stated) if stated else None)
    return out


def handoff_outcomes(predicted: list[bool], truth: list[bool]) -> dict[str, list[float | None]]:
    """Per item values whose subset means are handoff precision (over predicted handoffs), recall (over questions
    whose reference is the handoff) and the false-handoff rate (over questions the knowledge covers)."""
    return {"handoff_precision": [float(t) if p else None for p, t in zip(predicted, truth)],
            "handoff_recall": [float(p) if t else None for p, t in zip(predicted, truth)],
            "false_handoffs": [None if t else float(p) for p, t in zip(predicted, truth)]}


def subset_mean_estimate(values: list[float | None], indices: np.ndarray) -> Estimate | None:
    """Mean over the items that have a value (None: the metric does not apply to the item); each resample averages
    the applicable items it drew, so the interval uses the same resamples as every other metric."""
    present = np.array([v is not None for v in values], dtype=float)
    if not present.any():
        return None
    numbers = np.array([v or 0.0 for v in values], dtype=float)
    counts = present[indices].sum(axis=1)
    means = numbers[indices].sum(axis=1)[counts > 0] / counts[counts > 0]
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(numbers.sum() / present.sum()), float(low), float(high))


# --- product copy: what a description states about its product ------------------------------------------------

LONG_VALUE_WORDS = 6  # a value longer than this (a care instruction) counts as stated when most of its words are


def _stated(value: str, text: str) -> bool:
    value, text = " ".join(value.lower().split()), " ".join(text.lower().split())
    words = re.findall(r"[a-z]{3,}", value)
    if len(value.split()) > LONG_VALUE_WORDS and words:
        return sum(w in text for w in words) / len(words) >= 0.6
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def copy_checks(text: str, price: float, attributes: dict[str, str], own: str,
                alternatives: set[str]) -> dict[str, float | None]:
    """One description against its product's fields.

    coverage: the share of the product's attributes and its price the text states.
    contradicted: of the checkable values the text names (`alternatives`: the values products like it have for a
    categorical attribute such as material or colour, catalog.copy.categorical_values; any amount of money), the
    share its product does not have (`own`: text holding the product's title, category and attribute values, such as
    its copy prompt). Values are matched longest first, so "natural oak" is not also "oak".
    invented: the share of the text's facts (numbers, amounts, sizes: `extract_facts`) found nowhere in the
    product's fields. None where nothing of that kind applies."""
    own_text = own.lower()
    money = facts_by_kind(text).get("money", set())
    own_price = "$" + plain_number(f"{price:.2f}")
    stated = [_stated(v, text) for v in attributes.values() if v] + [own_price in money]
    scan, named, wrong = text.lower(), 0, 0
    for value in sorted(alternatives, key=len, reverse=True):
        pattern = re.compile(rf"(?<!\w){re.escape(value)}(?!\w)")
        found = len(pattern.findall(scan))
        if found:
            named += found
            wrong += 0 if pattern.search(own_text) else found
            scan = pattern.sub(" ", scan)
    named += len(money)
    wrong += len(money - {own_price})
    facts = extract_facts(text)
    known = extract_facts(own + f" ${price:.2f}")
    return {"coverage": sum(stated) / len(stated), "contradicted": wrong / named if named else None,
            "invented": len(facts - known) / len(facts) if facts else None}
