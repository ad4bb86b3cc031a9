"""What a finished run leaves beside its adapter: the loss-curve PNG and a Hub-style model card."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(log_path: Path) -> list[dict]:
    if not log_path.is_file():
        return []
    return [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(log_path: Path, png_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for points, label, style in ((train, "training loss", "-"), (val, "validation loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_title("ecombot fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def model_card(config: dict, summary: dict, results: dict) -> str:
    """README.md in the Hugging Face Hub's format, so the run directory can be shared as is."""
    base = config["model"]
    packing = results.get("packing")
    packed = f" (packed rows of {packing['row_tokens']} tokens)" if packing else ""
    card = f"""---
library_name: peft
base_model: {json.dumps(base if base != "gemma-3-270m" else "google/gemma-3-270m")}
pipeline_tag: text-generation
tags:
- ecombot
- customer-support
- {config["method"]}
---

# ecombot support adapter ({config["method"]})

A {config["method"].upper()} adapter trained with [ecombot](https://pypi.org/project/ecombot/) to answer e-commerce
customer-support questions.

- Base model: `{base}` (loaded from `{results["model_dir"]}`){" — Gemma terms of use apply" if "gemma" in base else ""}
- Method: {config["method"]}, rank {config["rank"]}, alpha {config["alpha"]}, dropout {config["dropout"]},
  rsLoRA {config["rslora"]}, target modules {config["target_modules"]}
- Training: learning rate {config["learning_rate"]}, batch {config["batch_size"]} x {config["grad_accum"]} accumulation{packed},
  {results["steps"]} optimizer steps, warmup {config["warmup_ratio"]} then cosine, seed {config["seed"]},
  precision {results["precision"]} on {results["device"]}
- Loss: only on assistant tokens, including the end-of-turn token.

## Data
- Source: `{summary["path"]}` ({summary["format"]}), {summary["rows_read"]} rows read, {summary["kept"]} kept,
  dropped: {json.dumps(summary["dropped"]) if summary["dropped"] else "none"}
- Split (train/validation/test): {results["split"]["train"]}/{results["split"]["validation"]}/{results["split"]["test"]},
  {len(summary["intents"])} intents, {summary["multi_turn"]} multi-turn conversations
- Token length percentiles: {json.dumps(summary["token_percentiles"])}; truncated at {summary["max_length"]}: {summary["truncated"]}

## Results
- Best validation loss: {results["best_val_loss"] if results["best_val_loss"] is not None else "n/a"} (step {results["best_step"]})
- Final training loss: {results["final_train_loss"] if results["final_train_loss"] is not None else "n/a"}
- Training time: {results["train_seconds"]:.0f} s, {results["tokens_per_s"]:.0f} tokens/s

## Use
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{results["model_dir"]}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
```
or `ecombot chat --adapter path/to/this/folder`.
"""
    return card
