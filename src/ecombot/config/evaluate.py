"""Evaluation configuration: what `ecombot evaluate` compares, on which test set, and how answers are generated."""

from __future__ import annotations

from dataclasses import dataclass, field

# Questions scored per test set unless --limit says otherwise. Answering is most of evaluate's time on a CPU: on a
# 2-core AVX2 EPYC the base model took 2.5 s a question (it talks to the token limit) and the quickstart adapter
# 1.7 s (64 built-in held-out questions, batches of 32), so the ~450 held-out questions of a 4,500-row file would
# keep the six answering systems busy for about 1.5 h. 200 keep the 95% intervals near +-0.03 semantic similarity
# and +-0.06 intent accuracy.
DEFAULT_LIMIT = 200
# The least answer token budget when it follows the data (models.answer_token_limit): the base model often talks
# until the limit, so the budget is most of its time.
ANSWER_TOKENS = 160
SYSTEMS = ("base", "base-fewshot", "retrieval", "finetuned", "finetuned+retrieval", "grounded", "base+knowledge")


@dataclass
class EvalConfig:
    data: str | None = None
    test: str | None = None
    adapters: list[str] = field(default_factory=list)
    systems: tuple[str, ...] = SYSTEMS
    model: str | None = None
    limit: int | None = DEFAULT_LIMIT  # questions per test set; 0 or None: all of them
    output: str = "runs/eval"
    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    fewshot_k: int = 3
    retrieval_k: int = 3
    # Questions answered by one batched generate call. A decoding step reads every weight once whatever the batch, so
    # 32 rows cost little more than 8: 2.6x the tokens/s on the 2-core Xeon (bf16), 2.5x in fp32 (AVX2 forced).
    batch_size: int = 32
    max_new_tokens: int | None = None  # None: room for the longest answer in the data scored, at least ANSWER_TOKENS
    knowledge: str | None = None  # knowledge base of grounded systems: None = the adapter's run record, else
    #                               "default"; "none" = no grounded systems
    db: str | None = None  # its database (default: the run record's, else $ECOMBOT_HOME's)
    reuse_answers: bool = True  # grounded systems give a stored Q&A pair's answer to a question it asks in other words
    check_facts: bool = True  # grounded systems leave out a sentence stating a fact the knowledge does not; hand over
    slices: bool = True  # also score the built-in data's slices (evaluate/slices.py) when evaluating on it
    engine: str = "transformers"  # runtime answering and scored: "transformers" or "llama.cpp" (chat.factory)
    grammar: str | None = None  # --task recommend: what answers may name (catalog/recommend.py GRAMMARS; None: GRAMMAR)
    system_prompt: str | None = None  # told to the base model (default: the store prompt); adapters get their run's
