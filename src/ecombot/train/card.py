"""The model card a finished run leaves beside its adapter (README.md in the Hugging Face Hub's format)."""

from __future__ import annotations

import json

from ecombot.config import TrainConfig
from ecombot.data import DataReport
from ecombot.train.result import TrainResult

TAGS = {"support": "customer-support", "copy": "product-descriptions", "recommend": "product-recommendations"}
PURPOSES = {"support": "answer e-commerce customer-support questions",
            "copy": "write product descriptions from a catalog's fields",
            "recommend": "recommend catalog products for a customer's request, among those the catalog search finds"}


def optional(value: float | None) -> str:
    return "n/a" if value is None else str(value)


def grounding_line(knowledge: dict | None) -> str:
    if not knowledge:
        return "- Grounding: none (trained without a knowledge base; answers come from the weights)"
    return (f"- Grounding: knowledge base `{knowledge['name']}` ({knowledge['passages']} passages from "
            f"{', '.join(knowledge['sources'])}; content hash {knowledge['content_hash']}), {knowledge['k']} passages "
            f"per prompt, {knowledge.get('ungrounded_share', 0):.0%} of conversations shown none (to answer with "
            f"knowledge off), "
            + (f"{knowledge['rule_examples']} answered with the document rule stating their answer (rule_share "
               f"{knowledge['rule_share']:g}), " if knowledge.get("rule_share") else "")
            + f"{knowledge['handoff_share']:.0%} taught the handoff answer:\n"
            f"  \"{knowledge['handoff']}\"")


def held_out_line(data: DataReport) -> str:
    held = data.held_out
    return (f"\n- Held out of every split: {held['conversations']} conversations of {', '.join(held['intents'])} "
            f"({held['reason']})" if held else "")


def other_tasks_line(others: dict[str, dict]) -> str:
    return "".join(f"\n- The {task} task's split (train/validation/test): {c['train']}/{c['validation']}/{c['test']}, "
                   f"in data/{task}/" for task, c in others.items())


def model_card(config: TrainConfig, data: DataReport, result: TrainResult, knowledge: dict | None = None,
               recipe: str = "", other_tasks: dict[str, dict] | None = None) -> str:
    """README.md in the Hugging Face Hub's format, so the run directory can be shared as is. `other_tasks`: a
    multi-task run's tasks beside its main one, with their split counts."""
    base, method, packing = config.model, config.method, result.packing
    tasks = config.tasks
    title = f"{tasks[0]} adapter" if len(tasks) == 1 else f"multi-task adapter ({', '.join(tasks)})"
    packed = f" (packed rows of {packing['row_tokens']} tokens)" if packing else ""
    layers = "" if config.adapted_layers == "all" else f", in the top {config.adapted_layers} decoder layers only"
    card = f"""---
library_name: peft
base_model: {json.dumps(base if base != "gemma-3-270m" else "google/gemma-3-270m")}
pipeline_tag: text-generation
tags:
- ecombot
{chr(10).join(f"- {TAGS[task]}" for task in tasks)}
- {method}
---

# ecombot {title} ({method})

A {method.upper()} adapter trained with [ecombot](https://pypi.org/project/ecombot/) to {"; to ".join(
    PURPOSES[task] for task in tasks)}.

- Base model: `{base}` (loaded from `{result.model_dir}`){" — Gemma terms of use apply" if "gemma" in base else ""}
- Method: {method}, rank {config.rank}, alpha {config.alpha}, dropout {config.dropout},
  rsLoRA {config.rslora}, target modules {config.target_modules}{layers}
- Training: learning rate {config.learning_rate}, batch {config.batch_size} x {config.grad_accum} accumulation{packed},
  {result.steps} optimizer steps, warmup {config.warmup_ratio} then cosine, seed {config.seed},
  precision {result.precision} on {result.device}
- Loss: only on assistant tokens, including the end-of-turn token.
{f"- Settings chosen for the data's size: {recipe}" + chr(10) if recipe else ""}{grounding_line(knowledge)}

## Data
- Source: `{data.path}` ({data.read_as}), {data.rows_read} {data.read_unit} read, {data.kept} kept,
  dropped: {json.dumps(dict(data.dropped)) if data.dropped else "none"}{held_out_line(data)}
- Split (train/validation/test): {result.split["train"]}/{result.split["validation"]}/{result.split["test"]},
  {len(data.intents)} intents, {data.multi_turn} multi-turn conversations{other_tasks_line(other_tasks or {})}
- Token length percentiles: {json.dumps(data.token_percentiles)}; truncated at {data.max_length}: {data.truncated}
- Answer length percentiles (tokens): {json.dumps(data.answer_tokens)}

## Results
- Best validation loss: {optional(result.best_val_loss)} (step {result.best_step})
- Final training loss: {optional(result.final_train_loss)}
- Training time: {result.train_seconds:.0f} s, {result.tokens_per_s:.0f} tokens/s

## Use
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{result.model_dir}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
```
or `ecombot chat --adapter path/to/this/folder`.
"""
    return card
