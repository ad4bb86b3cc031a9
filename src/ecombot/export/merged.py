"""Merged weights: the base model with the adapter added into its weights, saved as Transformers safetensors with the
tokenizer and the exact chat template of training, so `AutoModelForCausalLM` loads the bot with no PEFT and no
ecombot (and vLLM or llama.cpp's converter read it as any other model).

Written by hand around PEFT's `merge_and_unload` because that is where exports break:
- a QLoRA adapter learnt a correction to the 4-bit weights, so it is merged into those weights dequantized (what it
  trained against), not into the 16-bit original (a different base: the delta no longer fits it exactly), and never
  into 4-bit weights quantized again after the merge (rounding wipes out most of a small delta);
- tied input and output embeddings stay tied (LoRA never touches them; save_pretrained writes one matrix);
- the template is the one training rendered, with the run's system prompt as its default first message, and the
  end-of-turn token is a stop token in generation_config.json, so `generate` stops where the trained model stops;
  the tokens no answer may contain (models/vocab.py: the head's look-alikes of that token) are its `suppress_tokens`,
  as ecombot's engines leave them out (else `generate` may end an answer with a look-alike, which stops nothing).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ecombot import __version__
from ecombot.export.target import GEMMA_TERMS, build_export
from ecombot.models import (CHAT_ANSWER_TOKENS, answer_token_limit, load_adapter_base, load_tokenizer,
                            never_output_in, resolve_model)
from ecombot.models.template import stop_token_ids
from ecombot.run_dir import RunDir

def training_template(template: str, system_prompt: str | None) -> str:
    """The chat template with the run's system prompt as the default first message: `apply_chat_template` on the
    customer's messages alone then renders exactly the prompt the adapter was trained on (a conversation that
    brings its own system message keeps it, as in ecombot)."""
    if not system_prompt:
        return template
    # A JSON string is a valid Jinja string literal (quotes, backslashes, newlines escaped). Not ASCII-only: JSON
    # writes a character beyond the BMP (an emoji) as a surrogate pair, which Jinja decodes as two broken halves.
    literal = json.dumps(system_prompt, ensure_ascii=False)
    return ("{% if not messages or messages[0]['role'] != 'system' %}"
            f"{{% set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}"
            "{% endif %}" + template)


@dataclass
class ExportSource:
    """One adapter version of a run, with everything an export of it needs to know."""
    run: RunDir
    version: str
    adapter_dir: Path
    method: str
    base_model: str  # the spec the run was trained from
    model_dir: Path  # that base as a local Transformers directory
    tokenizer: object  # the base's tokenizer with the training template (system prompt baked in)
    base_template: str  # the template before the system prompt was baked in (GEMMA_TEMPLATE, FALLBACK_TEMPLATE, own)
    record: dict  # the part of ecombot_export.json every format shares

    @property
    def stops(self) -> list[int]:
        return stop_token_ids(self.tokenizer)

    @property
    def end_of_turn(self) -> int | None:
        """The token that closes an answer when it is not EOS (Gemma's <end_of_turn>); None with the fallback template."""
        others = [token for token in self.stops if token != self.tokenizer.eos_token_id]
        return others[0] if others else None


def export_source(run: str | Path, version: str | None = None) -> ExportSource:
    """The run's adapter (its live version unless `version` names one), checked to exist and be finished."""
    root = RunDir(run)
    name = version or root.live_version()
    source = root.existing_version(name)
    source.check_adapter()
    method = root.method()
    spec = root.base_model()
    model_dir = resolve_model(spec)
    tokenizer = copy.copy(load_tokenizer(model_dir))  # its chat template becomes the run's, below
    system_prompt = root.system_prompt()
    base_template = tokenizer.chat_template
    tokenizer.chat_template = training_template(base_template, system_prompt)
    longest = max(filter(None, (root.longest_answer(), source.longest_answer())), default=None)
    knowledge = source.knowledge()  # the exported version's (a learn version reads its feedback pairs too)
    record = {"run": str(root.path.resolve()), "version": name, "method": method, "base_model": spec,
              "system_prompt": system_prompt, "stop_tokens": tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)),
              "grounded": knowledge is not None, "ecombot_version": __version__,
              # the answer length runtimes are told (Ollama's num_predict): room for the longest answer the version
              # trained on (a learn version on feedback and a replay of its root's data: both counted)
              "answer_token_limit": answer_token_limit(longest, CHAT_ANSWER_TOKENS),
              # the tokens no answer may contain (models/vocab.py), for runtimes that take a list to ban
              # (Transformers' `suppress_tokens`, llama-server's and vLLM's `logit_bias`)
              "suppress_tokens": never_output_in(model_dir, stop_token_ids(tokenizer)).tolist()}
    if knowledge is not None:
        record["knowledge"] = {key: knowledge.get(key) for key in ("name", "k", "handoff", "content_hash", "pairs")}
    return ExportSource(root, name, source.path, method, spec, model_dir, tokenizer, base_template, record)


def merged_model(source: ExportSource):
    """The adapter merged into the weights it was trained against, in fp32 on the CPU, stopping where it stops."""
    from peft import PeftModel

    base = load_adapter_base(source.model_dir, source.method, dtype=torch.float32, device="cpu")
    model = PeftModel.from_pretrained(base, str(source.adapter_dir)).merge_and_unload()
    model.eval()
    model.generation_config.eos_token_id = source.stops
    if source.record["suppress_tokens"]:
        model.generation_config.suppress_tokens = source.record["suppress_tokens"]
    model.generation_config.pad_token_id = source.tokenizer.pad_token_id
    source.record.update(dtype="float32", tied_embeddings=bool(getattr(model.config, "tie_word_embeddings", False)))
    return model


def save_merged(source: ExportSource, folder: Path) -> None:
    """The merged model and the tokenizer with the training template, as a Transformers directory."""
    merged_model(source).save_pretrained(folder)
    source.tokenizer.save_pretrained(folder)


def grounded_note(record: dict) -> str:
    if not record["grounded"]:
        return ""
    return ("\nThis bot was trained grounded in the store's knowledge base "
            f"'{record['knowledge']['name']}': it answers best when the customer's last message carries the "
            f"{record['knowledge']['k']} passages found for it, in ecombot's layout (`Store knowledge:` then "
            "numbered passages, a blank line, `Customer question:` and the question). `ecombot chat` and "
            "`ecombot serve` do this for you; a plain client sends the question alone.\n")


def usage_text(record: dict) -> str:
    return (f"# Merged export of {Path(record['run']).name} ({record['version']})\n\n"
            f"Base model {record['base_model']} with the {record['method']} adapter merged in (fp32 safetensors). "
            f"{GEMMA_TERMS}\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)\n"
            "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"Where is my order?\"}],\n"
            "                                    add_generation_prompt=True, return_tensors=\"pt\")\n"
            f"print(tokenizer.decode(model.generate(ids, max_new_tokens={record['answer_token_limit']})"
            "[0, ids.shape[1]:], "
            "skip_special_tokens=True))\n```\n\n"
            f"The chat template is the one the adapter was trained with; generation stops at "
            f"{', '.join(record['stop_tokens'])}.\n{grounded_note(record)}")


def export_merged(run: str | Path, output: str | Path, version: str | None = None, overwrite: bool = False) -> dict:
    """Write the merged model into `output` (complete or not at all)."""
    def fill(folder: Path) -> dict:
        source = export_source(run, version)
        save_merged(source, folder)
        return {"format": "merged", **source.record}

    return build_export(output, overwrite, fill, usage_text)
