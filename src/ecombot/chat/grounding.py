"""Which knowledge base `ecombot chat` and `ecombot serve` answer from. A run trained grounded learned to read its
knowledge base's passages (k of them) and to answer with its handoff text, so by default those come from the run."""

from __future__ import annotations

from pathlib import Path

from ecombot.errors import EcombotError
from ecombot.knowledge import REUSE_THRESHOLD, Grounder, scope_of
from ecombot.run_dir import RunDir

DEFAULT_KNOWLEDGE = "default"
DEFAULT_K = 3


def open_knowledge(run_dir: Path | list[Path] | None, name: str | None, db: str | None, k: int | None,
                   reuse_answers: bool = True, check_facts: bool = True) -> tuple[Grounder | None, str]:
    """The grounder (None: answers come from the weights alone) and one line for the terminal saying which.

    `run_dir`: the adapter, or the support adapters a server answers with (they share one grounder: the first
    one's settings, every one's training pairs; each one's live version's record). `name`, `db` and `k` are the
    flags, None when not given: then the run's recorded knowledge, else the "default" base with k=3. A base that
    the flag or the run names must hold passages (EcombotError otherwise); the default one may be empty (a fresh
    install has none yet), and then nothing is grounded. `reuse_answers`: a question a stored Q&A pair asks in
    other words gets its answer (knowledge/grounding.py, REUSE_THRESHOLD); `check_facts`: a generated answer states
    no fact the knowledge base and the conversation do not (Grounder.fact_check; its facts are read here, once)."""
    from ecombot.knowledge import open_grounder  # looked up per call, so that tests can stand in a fake base

    runs = [] if run_dir is None else run_dir if isinstance(run_dir, list) else [run_dir]
    # The live version's record: after `ecombot learn` promotes v2, its feedback pairs are the adapter's too.
    records = [RunDir(run).live().knowledge() or {} for run in runs]
    recorded = records[0] if records else {}
    chosen = name or recorded.get("name") or DEFAULT_KNOWLEDGE
    if chosen == "none":
        return None, "knowledge: none, answers come from the model alone"
    k = k or recorded.get("k") or DEFAULT_K
    try:
        grounder = open_grounder(chosen, db or recorded.get("db"), k, recorded.get("handoff"),
                                 REUSE_THRESHOLD if reuse_answers else None,
                                 pairs_from=scope_of(records, chosen),  # their own training pairs only
                                 check_facts=check_facts)
    except EcombotError as exc:
        if name or recorded:
            raise
        return None, f"knowledge: none, answers come from the model alone ({exc})"
    reuse = f", stored answers reused from cosine {REUSE_THRESHOLD:.2f}" if reuse_answers else ", every answer generated"
    checked = "" if check_facts else ", facts unchecked"
    return grounder, f"knowledge: {chosen!r}, {k} passages per question{reuse}{checked}"
