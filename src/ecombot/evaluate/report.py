"""Write an evaluation: results.json, predictions.jsonl, report.md + report.html with PNG plots, a terminal table."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from markdown_it import MarkdownIt

from ecombot import atomic
from ecombot.evaluate.metrics import Estimate
from ecombot.evaluate.result import EvalResult, Prediction, SystemScores
from ecombot.run_dir import RunDir

MAIN_METRICS = ("bleu", "chrf", "rouge_l", "semantic", "intent_accuracy")  # plotted; semantic/intent as 0-100
GROUNDING_METRICS = ("fact_accuracy", "invented_fact_rate", "handoff_precision", "handoff_recall", "false_handoffs",
                     "stored_answers", "facts_left_out")
TABLE_METRICS = ("bleu", "chrf", "rouge_l", "semantic", "intent_accuracy", "loss", "latency_s", "cut_at_limit",
                 *GROUNDING_METRICS)
HANDOFF_METRICS = ("handoff_precision", "handoff_recall", "false_handoffs")
TRANSCRIPTS = 10  # of the held-out set; 3 of each slice
SLICE_TEXT = {
    "unseen_topics": "intents held out of training entirely; the answer is only in the store's knowledge",
    "policy_edits": "the store changed its policy after training; the knowledge base and the references carry the "
                    "new values, the weights the old ones",
    "not_covered": "questions the store's knowledge does not answer; the reference is the handoff",
}
HTML_HEAD = ("<!doctype html><meta charset='utf-8'><title>ecombot evaluation</title>\n"
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
             "img{max-width:100%}</style>\n")


def fmt(metric: Estimate | None, digits: int = 2) -> str:
    if metric is None:
        return "–"
    return f"{metric.value:.{digits}f} [{metric.low:.{digits}f}, {metric.high:.{digits}f}]"


def digits_for(name: str) -> int:
    return 3 if name in ("semantic", "intent_accuracy", "loss", "latency_s", "cut_at_limit", *GROUNDING_METRICS) else 1


def table_rows(systems: dict[str, SystemScores]) -> list[list[str]]:
    return [[name] + [fmt(getattr(s, m), digits_for(m)) for m in TABLE_METRICS] for name, s in systems.items()]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def transcripts(predictions: list[Prediction]) -> list[str]:
    md = []
    for p in predictions:
        md += [f"**Question** ({p.intent or 'no intent'}): {p.question}", "", f"- *reference*: {p.reference}"]
        for name, answer in p.answers.items():
            sources = p.sources.get(name, [])
            used = ", ".join(source["label"] for source in sources)
            how = "stored answer of" if sources and sources[0].get("reused") else "sources:"
            md.append(f"- *{name}*: {answer}" + (f" ({how} {used})" if used else ""))
            if p.left_out.get(name):
                md.append(f"  - *left out by the fact check*: {' / '.join(p.left_out[name])}")
        md.append("")
    return md


def slice_sections(result: EvalResult) -> list[str]:
    md = ["## Slices of the built-in data", "",
          "Fact accuracy = share of the reference's facts (amounts, durations, times, numbers, addresses) the answer "
          "states; invented facts = share of the answer's facts found neither in the reference nor in the knowledge "
          "the system could see; a handoff is predicted when the system chose not to answer or its answer is the "
          "handoff; false handoffs = share of covered questions handed over; stored answers = share answered with a "
          "stored Q&A pair's answer as written, without the model (its question asked in other words); facts left "
          "out = share of answers that lost a sentence stating a fact the knowledge base does not, and so end with "
          "the handoff (the fact check, on by default).", ""]
    for name, scores in result.slices.items():
        md += [f"### {name} ({scores.test_size} questions)", "", SLICE_TEXT.get(name, ""), ""]
        md += markdown_table(["system", *TABLE_METRICS], table_rows(scores.systems)) + [""]
        md += transcripts([p for p in result.predictions if p.slice == name][:3])
    if result.handoff:
        md += ["### Handoffs over the held-out set and every slice", ""]
        md += markdown_table(["system", *HANDOFF_METRICS], [[name] + [fmt(values[m], 3) for m in HANDOFF_METRICS]
                                                            for name, values in result.handoff.items()]) + [""]
    return md


def plot_metrics(result: EvalResult, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.systems)
    fig, axes = plt.subplots(1, len(MAIN_METRICS), figsize=(4 * len(MAIN_METRICS), 4), dpi=100)
    for ax, metric in zip(axes, MAIN_METRICS):
        scale = 100.0 if metric in ("semantic", "intent_accuracy") else 1.0
        values, errors = [], [[], []]
        for name in names:
            m = getattr(result.systems[name], metric)
            v = m.value * scale if m else 0.0
            values.append(v)
            errors[0].append(v - m.low * scale if m else 0.0)
            errors[1].append(m.high * scale - v if m else 0.0)
        ax.bar(range(len(names)), values, yerr=errors, capsize=4, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric + (" (x100)" if scale == 100 else ""))
    fig.tight_layout()
    atomic.save_figure(fig, png)
    plt.close(fig)
    return png


def plot_intents(result: EvalResult, png: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.systems)
    intents = sorted({i for s in result.systems.values() for i in s.per_intent})
    if not intents:
        return None
    grid = np.array([[result.systems[n].per_intent[i].semantic if i in result.systems[n].per_intent else np.nan
                      for n in names] for i in intents])
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(names), 1 + 0.28 * len(intents)), dpi=100)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(intents)), intents, fontsize=7)
    ax.set_title("semantic similarity to the reference, per intent")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    atomic.save_figure(fig, png)
    plt.close(fig)
    return png


def write_report(result: EvalResult, output: Path) -> dict[str, Path]:
    """results.json, predictions.jsonl, the plots and report.md/.html for `result`; returns the paths by name."""
    from ecombot.evaluate.anatomy import plot_anatomy

    output.mkdir(parents=True, exist_ok=True)
    anatomies, predictions = result.adapter_anatomy, result.predictions
    atomic.write_json(output / "results.json", result.to_dict())
    atomic.write_text(output / "predictions.jsonl",
                      "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in predictions))
    images = {"metrics": plot_metrics(result, output / "metrics.png")}
    heatmap = plot_intents(result, output / "intents.png")
    if heatmap:
        images["intents"] = heatmap
    for i, adapter in enumerate(result.adapters):
        run = RunDir(adapter)
        if run.log_file.is_file():
            images[f"loss curve {run.path.name}"] = run.plot_loss_curve(output / f"loss_curve_{i}.png")
    for i, anatomy in enumerate(anatomies):
        images[f"adapter anatomy {Path(anatomy['run']).name}"] = plot_anatomy(anatomy, output / f"anatomy_{i}.png")

    md = ["# ecombot evaluation", "",
          f"Test set: {result.test_size} conversations ({json.dumps(result.source)}); "
          f"training pool for retrieval/few-shot: {result.train_size}. 95% bootstrap intervals "
          f"({result.bootstrap_samples} resamples). BLEU, chrF and ROUGE-L on 0–100; semantic = mean cosine "
          "similarity of answer and reference embeddings; loss = held-out cross-entropy per answer token"
          + (f"; cut_at_limit = share of answers stopped at the {result.config.max_new_tokens}-token limit, not by "
             "the model ('–': a system that generates nothing)" if result.config.max_new_tokens else "") + ".", ""]
    if result.source.get("leaked_test_questions"):
        md += [f"**Warning: {result.source['leaked_test_questions']} test questions also appear in the training "
               "data.**", ""]
    if result.knowledge:
        md += [f"Knowledge base (grounded systems): {json.dumps(result.knowledge)}.", ""]
    md += markdown_table(["system", *TABLE_METRICS], table_rows(result.systems)) + [""]
    if result.slices:
        md += slice_sections(result)
    for anatomy in anatomies:
        md += [f"## Adapter anatomy: {Path(anatomy['run']).name}", "",
               f"Trainable parameters: {anatomy['trainable_parameters']:,}"
               + (f" ({anatomy['trainable_percent']:.2f}% of the base)" if anatomy["trainable_percent"] else "")
               + f"; rank {anatomy['rank']}, alpha {anatomy['alpha']}. Effective rank = singular values holding "
               f"{int(anatomy['energy_threshold'] * 100)}% of the energy of ΔW.", "",
               "| module | ‖ΔW‖/‖W‖ | effective rank | top singular value |", "|---|---|---|---|"]
        md += [f"| {m['name']} | {m['relative_norm']:.4f} | {m['effective_rank']} | {m['singular_values'][0]:.4f} |"
               for m in anatomy["modules"]]
        md += [""]
    md += ["## Plots", ""] + [f"![{label}]({path.name})" for label, path in images.items()] + [""]
    md += ["## Transcripts", ""] + transcripts([p for p in predictions if p.slice == "heldout"][:TRANSCRIPTS])
    atomic.write_text(output / "report.md", "\n".join(md))
    atomic.write_text(output / "report.html", markdown_to_html("\n".join(md)))
    return {"results": output / "results.json", "report": output / "report.md", **images}


def markdown_to_html(md: str) -> str:
    """report.md as a standalone page; HTML inside answers stays text (html off), tables as in GitHub Markdown."""
    return HTML_HEAD + MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
