"""Evaluation of the product-copy task, read top to bottom: the run's held-out products -> each system writes their
descriptions -> every description checked against its product's fields (evaluate/metrics.py `copy_checks`) and
compared with the reference copy, with 95% bootstrap intervals on the same resamples.

Systems: `base-fewshot` (the base model shown k training products and their descriptions, then the product: the
untrained model "prompted with the attributes"; without examples a base model continues the list of fields) and
each adapter of a copy run."""

from __future__ import annotations

from ecombot.catalog.copy import categorical_values, copy_prompt
from ecombot.config import EvalConfig
from ecombot.errors import EcombotError
from ecombot.evaluate import metrics
from ecombot.evaluate.run import generate_all
from ecombot.evaluate.report import markdown_table
from ecombot.evaluate.tasks import (answering_systems, catalog_runs, estimate_cell, generation_scores, held_out,
                                   write_outputs)


def score_copy(answers: list[str], products, references: list[str], alternatives, indices) -> dict:
    checks = [metrics.copy_checks(a, p.price, p.attributes, copy_prompt(p), alternatives.get(p.category, set()))
              for a, p in zip(answers, products)]
    contradicted = [c["contradicted"] for c in checks]
    estimates = {
        "attribute_coverage": metrics.mean_estimate([c["coverage"] for c in checks], indices),
        "contradicted_attribute_rate": metrics.subset_mean_estimate(contradicted, indices),
        "descriptions_with_a_contradiction": metrics.mean_estimate([bool(c) for c in contradicted], indices),
        "invented_attribute_rate": metrics.subset_mean_estimate([c["invented"] for c in checks], indices),
        "rouge_l": metrics.mean_estimate(metrics.rouge_l(answers, references), indices),
        "bleu": metrics.corpus_bleu(answers, references, indices),
    }
    return {name: e.to_dict() if e is not None else None for name, e in estimates.items()}


def evaluate_copy(cfg: EvalConfig, say=print) -> dict:
    run, catalog, products = catalog_runs(cfg.adapters, "copy")
    by_prompt = {copy_prompt(p): p for p in products}
    test = held_out(run, "copy", cfg, say)
    missing = [c.source for c in test if c.question not in by_prompt]
    if missing:
        raise EcombotError(f"{len(missing)} test products of {run.path} are not in the catalog {catalog} as "
                           f"they were (first: {missing[0]}); evaluate against the catalog the run trained on")
    items = [by_prompt[c.question] for c in test]
    references = [c.answer for c in test]
    engine, runs = answering_systems(cfg, run, "copy", test, say)
    alternatives = categorical_values(products)
    indices = metrics.bootstrap_indices(len(items), seed=cfg.seed)
    systems, predictions = {}, [{"sku": p.sku, "reference": r} for p, r in zip(items, references)]
    for name, adapter, prefix in runs:
        say(f"writing {len(items)} descriptions with {name} ...")
        answered = generate_all(engine, [prefix + c.messages[:-1] for c in test], adapter, cfg.batch_size)
        systems[name] = {**score_copy(answered.answers, items, references, alternatives, indices),
                         **generation_scores(answered, indices)}
        for row, answer in zip(predictions, answered.answers):
            row[name] = answer
    result = {"task": "copy", "catalog": str(catalog), "products": len(items), "max_new_tokens": cfg.max_new_tokens,
              "systems": systems}
    write_outputs(cfg.output, result, predictions, copy_report(result))
    return result


COLUMNS = [("attribute_coverage", "attribute coverage", 1), ("contradicted_attribute_rate", "contradicted", 1),
           ("descriptions_with_a_contradiction", "texts with a contradiction", 1),
           ("invented_attribute_rate", "invented", 1), ("rouge_l", "ROUGE-L", 1), ("bleu", "BLEU", 1),
           ("cut_at_limit", "cut at limit", 1)]


def copy_rows(result: dict) -> list[list[str]]:
    return [[name] + [estimate_cell(scores[key], scale) for key, _, scale in COLUMNS]
            for name, scores in result["systems"].items()]


def copy_report(result: dict) -> str:
    lines = [f"# Product copy: {result['products']} held-out products of {result['catalog']}", "",
             "Coverage: share of the product's attributes and price the description states. Contradicted: of the "
             "materials, colours, sizes, collections (whatever categorical attributes the catalog has) and amounts "
             "it names, the share the product does not have. Invented: of its numbers and amounts, the share found "
             "nowhere in the product's fields. Cut at limit: share of descriptions stopped at the "
             f"{result['max_new_tokens']}-token limit, not by the model. 95% bootstrap intervals.", ""]
    lines += markdown_table(["system"] + [title for _, title, _ in COLUMNS], copy_rows(result))
    return "\n".join(lines) + "\n"
