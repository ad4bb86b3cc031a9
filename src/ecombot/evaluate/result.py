"""What an evaluation produces, typed: returned by `evaluate`, written as results.json and predictions.jsonl."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ecombot.config import EvalConfig
from ecombot.evaluate import metrics


@dataclass
class IntentScores:
    """Means over the test items of one intent (a finer view than the bootstrap estimates)."""

    n: int
    semantic: float
    rouge_l: float
    intent_correct: float | None = None  # only where intent accuracy is measured

    def to_dict(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass
class SystemScores:
    """One system's metrics, each with its 95% interval; None where a metric does not apply to the system."""

    bleu: metrics.Estimate
    chrf: metrics.Estimate
    rouge_l: metrics.Estimate
    semantic: metrics.Estimate
    intent_accuracy: metrics.Estimate | None
    loss: metrics.Estimate | None
    perplexity: metrics.Estimate | None
    latency_s: metrics.Estimate
    answer_tokens: metrics.Estimate
    tokens_per_s: float | None
    seconds: float
    per_intent: dict[str, IntentScores]
    # grounded answers (see metrics.py): items without a reference fact, without an answer fact, without a
    # predicted handoff, ... do not count in the metric that needs one; None when no item does
    fact_accuracy: metrics.Estimate | None = None
    invented_fact_rate: metrics.Estimate | None = None
    handoff_precision: metrics.Estimate | None = None
    handoff_recall: metrics.Estimate | None = None
    false_handoffs: metrics.Estimate | None = None
    stored_answers: metrics.Estimate | None = None  # share given a stored Q&A pair's answer (knowledge/grounding.py)
    facts_left_out: metrics.Estimate | None = None  # share whose generated answer lost a sentence (knowledge/facts.py)
    cut_at_limit: metrics.Estimate | None = None  # share of answers stopped by the token limit; None: not generated

    def to_dict(self) -> dict:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row = {name: (value.to_dict() if isinstance(value, metrics.Estimate) else value) for name, value in row.items()}
        row["per_intent"] = {intent: scores.to_dict() for intent, scores in self.per_intent.items()}
        return row


@dataclass
class Prediction:
    """One test conversation and every system's answer to it (a line of predictions.jsonl)."""

    question: str
    intent: str | None
    turns: int
    reference: str
    answers: dict[str, str]
    slice: str = "heldout"
    sources: dict[str, list[dict]] = field(default_factory=dict)  # per grounded system: the passages it was shown
    left_out: dict[str, list[str]] = field(default_factory=dict)  # per grounded system: sentences the fact check cut


@dataclass
class SliceScores:
    """The systems' scores on one slice of the built-in data (evaluate/slices.py)."""

    test_size: int
    systems: dict[str, SystemScores]

    def to_dict(self) -> dict:
        return {"test_size": self.test_size, "systems": {name: s.to_dict() for name, s in self.systems.items()}}


@dataclass
class EvalResult:
    """What an evaluation produced; results.json is `to_dict()`, predictions.jsonl the predictions."""

    config: EvalConfig  # a copy: the settings this evaluation ran with
    model: str | None
    adapters: list[str]
    source: dict  # where the test set came from, as load_sets recorded it (keys differ for --test and --data)
    test_size: int
    train_size: int
    system_prompts: dict[str, str | None]
    bootstrap_samples: int
    systems: dict[str, SystemScores]
    predictions: list[Prediction]
    slices: dict[str, SliceScores] = field(default_factory=dict)
    handoff: dict[str, dict[str, metrics.Estimate | None]] = field(default_factory=dict)  # per system, all sets pooled
    knowledge: dict = field(default_factory=dict)  # the knowledge base the grounded systems searched
    adapter_anatomy: list[dict] = field(default_factory=list)  # filled by run_evaluation
    files: dict[str, Path] = field(default_factory=dict)  # what write_report wrote, by name

    def to_dict(self) -> dict:
        results = {"config": asdict(self.config), "model": self.model, "adapters": self.adapters, "source": self.source,
                   "test_size": self.test_size, "train_size": self.train_size, "system_prompts": self.system_prompts,
                   "bootstrap_samples": self.bootstrap_samples,
                   "systems": {name: scores.to_dict() for name, scores in self.systems.items()}}
        if self.slices:
            results["slices"] = {name: scores.to_dict() for name, scores in self.slices.items()}
        if self.handoff:
            results["handoff"] = {name: {k: e.to_dict() if e else None for k, e in values.items()}
                                  for name, values in self.handoff.items()}
        if self.knowledge:
            results["knowledge"] = self.knowledge
        if self.adapter_anatomy:
            results["adapter_anatomy"] = self.adapter_anatomy
        return results
