"""Merged weights: the base model with the adapter added into its weights, saved as Transformers safetensors with the
tokenizer and the exact chat template of training, so `AutoModelForCausalLM` loads the bot with no PEFT and no
ecombot (and vLLM or llama.cpp's converter read it as any other model).

Written by hand around PEFT's `merge_and_unload` because that is where exports break:
- a QLoRA adapter learnt a correction to the 4-bit weights, so it is merged into those weights dequantized (what it
  trained against), not into the 16-bit original (a different base: the delta no longer fits it exactly), and never
  into 4-bit weights quantized again after the merge (rounding wipes out most of a small delta);
- tied input and output embeddings stay tied (LoRA never touches them; save_pretrained writes one matrix);
- the template is the one training rendered, with the run's system prompt as its default first message, and the
  end-of-turn token is a stop token in generation_config.json, so `generate` stops where the trained model stops.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import torch

from ecombot import __version__
from ecombot.atomic import move_into_place
from ecombot.errors import EcombotError
from ecombot.models import load_adapter_base, load_tokenizer, resolve_model
from ecombot.models.template import stop_token_ids
from ecombot.run_dir import RunDir

RECORD = "ecombot_export.json"


def training_template(template: str, system_prompt: str | None) -> str:
    """The chat template with the run's system prompt as the default first message: `apply_chat_template` on the
    customer's messages alone then renders exactly the prompt the adapter was trained on (a conversation that
    brings its own system message keeps it, as in ecombot)."""
    if not system_prompt:
        return template
    literal = json.dumps(system_prompt)  # a JSON string is a valid Jinja string literal (quotes, newlines escaped)
    return ("{% if not messages or messages[0]['role'] != 'system' %}"
            f"{{% set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}"
            "{% endif %}" + template)


def merged_model(run: str | Path, version: str | None = None):
    """(model, tokenizer, record): the run's adapter (its live version unless `version` names one) merged into the
    weights it was trained against, in fp32 on the CPU."""
    from peft import PeftModel

    root = RunDir(run)
    name = version or root.live_version()
    source = root.existing_version(name)
    source.check_adapter()
    method = root.method()
    spec = root.base_model()
    model_dir = resolve_model(spec)
    base = load_adapter_base(model_dir, method, dtype=torch.float32, device="cpu")
    model = PeftModel.from_pretrained(base, str(source.path)).merge_and_unload()
    model.eval()
    tokenizer = load_tokenizer(model_dir)
    system_prompt = root.system_prompt()
    tokenizer.chat_template = training_template(tokenizer.chat_template, system_prompt)
    stops = stop_token_ids(tokenizer)
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    knowledge = root.knowledge()
    record = {"format": "merged", "run": str(root.path.resolve()), "version": name, "method": method,
              "base_model": spec, "system_prompt": system_prompt,
              "stop_tokens": tokenizer.convert_ids_to_tokens(stops), "dtype": "float32",
              "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
              "grounded": knowledge is not None, "ecombot_version": __version__}
    if knowledge is not None:
        record["knowledge"] = {key: knowledge.get(key) for key in ("name", "k", "handoff", "content_hash")}
    return model, tokenizer, record


def usage_text(record: dict) -> str:
    grounded = ""
    if record["grounded"]:
        grounded = ("\nThis bot was trained grounded in the store's knowledge base "
                    f"'{record['knowledge']['name']}': it answers best when the customer's last message carries the "
                    f"{record['knowledge']['k']} passages found for it, in ecombot's layout (`Store knowledge:` then "
                    "numbered passages, a blank line, `Customer question:` and the question). `ecombot chat` and "
                    "`ecombot serve` do this for you; a plain client sends the question alone.\n")
    return (f"# Merged export of {Path(record['run']).name} ({record['version']})\n\n"
            f"Base model {record['base_model']} with the {record['method']} adapter merged in (fp32 safetensors). "
            "Weights derived from Gemma are under the Gemma terms of use: https://ai.google.dev/gemma/terms\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)\n"
            "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"Where is my order?\"}],\n"
            "                                    add_generation_prompt=True, return_tensors=\"pt\")\n"
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=100)[0, ids.shape[1]:], "
            "skip_special_tokens=True))\n```\n\n"
            f"The chat template is the one the adapter was trained with; generation stops at "
            f"{', '.join(record['stop_tokens'])}.\n{grounded}")


def export_merged(run: str | Path, output: str | Path, version: str | None = None, overwrite: bool = False) -> dict:
    """Write the merged model into `output` (complete or not at all: built beside it, then renamed into place)."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise EcombotError(f"{output} exists and is not empty; choose another --output or pass --overwrite")
    model, tokenizer, record = merged_model(run, version)
    output.parent.mkdir(parents=True, exist_ok=True)
    building = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        (building / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (building / "README.md").write_text(usage_text(record), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        move_into_place(building, output)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return {**record, "output": str(output)}
