"""Evaluation of the recommendation task, read top to bottom: the run's held-out requests (each with the candidates
the catalog search found) -> the search baseline's top MAX_PICKS, the base model shown k solved requests, and each
adapter, decoding under the chosen grammar (`--grammar`: the candidates, the whole catalog, or none) -> the SKUs each
names (those the grammar allows: any other SKU-like line is dropped and counted) -> scored against the request's
known answers (catalog/requests.py `score_recommendations`)."""

from __future__ import annotations

from ecombot.catalog import CatalogSearch
from ecombot.catalog.recommend import (GRAMMAR, MAX_PICKS, REPETITION_PENALTY, REQUEST_HEADER, answer_grammars,
                                       nameable, parse_recommendations, request_set)
from ecombot.catalog.requests import per_request_scores, score_recommendations
from ecombot.config import EvalConfig
from ecombot.errors import EcombotError
from ecombot.evaluate import metrics
from ecombot.evaluate.run import generate_all
from ecombot.evaluate.report import markdown_table
from ecombot.evaluate.tasks import (answering_systems, catalog_runs, estimate_cell, generation_scores, held_out,
                                   write_outputs)

COLUMNS = [("sku_exists", "SKUs exist"), ("constraints_met_per_request", "constraints met (per request)"),
           ("hit_at_1_ci", "hit@1"), ("hit_at_k_ci", f"hit@{MAX_PICKS}"), ("returned_per_request", "returned per request"),
           ("empty", "requests answered with none"), ("dropped_skus", "SKU-like lines dropped"),
           ("cut_at_limit", "cut at limit")]


GRAMMAR_NOTES = {"candidates": "The models decoded under a grammar letting them name only the request's candidates. ",
                 "catalog": "The models decoded under a grammar letting them name any product of the catalog. ",
                 "none": "The models decoded freely; lines naming no candidate were dropped. "}


def scored(requests, returned: list[list[str]], products, indices) -> dict:
    """The aggregate scores, and the per-request ones with 95% bootstrap intervals (the same resamples for every
    system: paired)."""
    per = per_request_scores(requests, returned, products, MAX_PICKS)
    return {**score_recommendations(requests, returned, products, MAX_PICKS),
            "constraints_met_per_request": metrics.subset_mean_estimate(per["constraints_met"], indices).to_dict()
            if any(v is not None for v in per["constraints_met"]) else None,
            "hit_at_1_ci": metrics.mean_estimate(per["hit_at_1"], indices).to_dict(),
            "hit_at_k_ci": metrics.mean_estimate(per["hit_at_k"], indices).to_dict()}


def evaluate_recommend(cfg: EvalConfig, say=print) -> dict:
    run, catalog, products = catalog_runs(cfg.adapters, "recommend")
    seed = run.info()["config"]["seed"]
    by_text = {r.text: r for r in request_set(products, seed)}
    by_sku = {p.sku: p for p in products}
    test = held_out(run, "recommend", cfg, say)
    texts = [c.question.rsplit(REQUEST_HEADER, 1)[-1].strip() for c in test]
    missing = [c.source for c, t in zip(test, texts) if t not in by_text]
    if missing:
        raise EcombotError(f"{len(missing)} test requests of {run.path} are not those the catalog {catalog} gives "
                           f"now (first: {missing[0]}); evaluate against the catalog the run trained on")
    requests = [by_text[t] for t in texts]
    candidates = [[by_sku[line.split(" | ", 1)[0]] for line in c.question.splitlines()[1:] if " | " in line]
                  for c in test]
    indices = metrics.bootstrap_indices(len(test), seed=cfg.seed)
    systems, predictions = {}, [{"request": t, "answers": sorted(r.answers), "candidates": [p.sku for p in c]}
                                for t, r, c in zip(texts, requests, candidates)]
    if "search" in cfg.systems:
        found = [[r.sku for r in recs] for recs in CatalogSearch(products).recommend(texts, MAX_PICKS)]
        systems["search"] = {**scored(requests, found, products, indices), "dropped_skus": 0}
        for row, skus in zip(predictions, found):
            row["search"] = skus
    generating = set(cfg.systems) - {"search"}
    engine, runs = answering_systems(cfg, run, "recommend", test, say, REPETITION_PENALTY) if generating else (None, [])
    grammar = cfg.grammar or GRAMMAR
    grammars = answer_grammars(grammar, candidates, products)
    names = nameable(grammar, candidates, products)
    for name, adapter, prefix in runs:
        say(f"answering {len(test)} requests with {name} ...")
        answered = generate_all(engine, [prefix + c.messages[:-1] for c in test], adapter, cfg.batch_size,
                                grammars=grammars)
        parsed = [parse_recommendations(a, c) for a, c in zip(answered.answers, names)]
        systems[name] = {**scored(requests, [p.skus for p in parsed], products, indices),
                         "dropped_skus": sum(p.dropped for p in parsed), **generation_scores(answered, indices)}
        for row, answer, p in zip(predictions, answered.answers, parsed):
            row[name] = {"text": answer, "skus": p.skus}
    result = {"task": "recommend", "catalog": str(catalog), "requests": len(test), "max_new_tokens": cfg.max_new_tokens,
              "grammar": grammar, "systems": systems}
    write_outputs(cfg.output, result, predictions, recommend_report(result))
    return result


def recommend_rows(result: dict) -> list[list[str]]:
    def cell(key: str, value) -> str:
        if isinstance(value, dict) or value is None:
            return estimate_cell(value, 100)
        return f"{value:.1%}" if key == "sku_exists" else f"{value:g}"
    return [[name] + [cell(key, scores.get(key)) for key, _ in COLUMNS] for name, scores in result["systems"].items()]


def recommend_report(result: dict) -> str:
    lines = [f"# Recommendations: {result['requests']} held-out requests over {result['catalog']}", "",
             "Each request states a category and some of material, colour, size and budget; its known answers are "
             "every product meeting all of them. Constraints met: per request, the share of its returned products meeting "
             f"every stated constraint, averaged over requests that got any. hit@1 / hit@{MAX_PICKS}: the first / any "
             "returned product is a known answer. "
             + (f"Cut at limit: share of answers stopped at the {result['max_new_tokens']}-token limit, not by the "
                "model. " if result.get("max_new_tokens") else "")
             + GRAMMAR_NOTES.get(result.get("grammar"), "")
             + "Percentages with 95% bootstrap intervals.", ""]
    return "\n".join(lines + markdown_table(["system"] + [t for _, t in COLUMNS], recommend_rows(result))) + "\n"
