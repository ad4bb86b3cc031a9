"""Ollama: a directory that `ollama create NAME -f Modelfile` turns into the store's bot.

The Modelfile points at the GGUF files of a `lora-gguf` export (the base GGUF the adapter was trained against plus
the adapter) or, when no LoRA GGUF can be made or a `--quant` is asked for, at a merged GGUF. Ollama renders prompts
with Go templates, not Jinja, so the training template is written again as a Go template here, by hand, for the two
templates ecombot itself gives a model (Gemma's turns, the plain role-marker fallback); a test renders both with Go's
text/template and compares them with the Jinja rendering of training. The run's system prompt is the default first
message exactly as in training (a request with its own system message replaces it). Differences that remain, by
design of Ollama: the BOS token is added by Ollama's tokenizer rather than written by the template, and message
contents are not stripped of surrounding whitespace (ecombot's template trims them).
"""

from __future__ import annotations

import json
from pathlib import Path

from ecombot.errors import EcombotError
from ecombot.export.gguf import check_quant, gguf_file_name, write_lora_gguf, write_merged_gguf
from ecombot.export.merged import ExportSource, export_source, grounded_note
from ecombot.export.target import GEMMA_TERMS, build_export
from ecombot.models.template import FALLBACK_TEMPLATE, GEMMA_TEMPLATE

MODELFILE = "Modelfile"


def _go_string(text: str) -> str:
    """A Go string literal (JSON's escapes are Go's; non-ASCII stays raw, since Go rejects JSON's surrogate pairs)."""
    return json.dumps(text, ensure_ascii=False)


def go_template(base_template: str, system_prompt: str | None, eos_token: str) -> str:
    """The training template as an Ollama (Go text/template) TEMPLATE, without the BOS token Ollama adds itself."""
    default = f"{{{{- $prefix := printf \"%s\\n\\n\" {_go_string(system_prompt)} }}}}" if system_prompt \
        else '{{- $prefix := "" }}'
    if base_template == GEMMA_TEMPLATE:
        # Gemma has no system role: the system prompt opens the first user turn, as in models/template.py.
        return (default + "{{- $opened := false }}"
                "{{- range $i, $m := .Messages }}"
                '{{- if and (eq $i 0) (eq $m.Role "system") }}{{ $prefix = printf "%s\\n\\n" $m.Content }}'
                '{{- else }}<start_of_turn>{{ if eq $m.Role "assistant" }}model{{ else }}user{{ end }}\n'
                "{{ if not $opened }}{{ $prefix }}{{ end }}{{ $opened = true }}{{ $m.Content }}<end_of_turn>\n"
                "{{ end }}{{- end }}<start_of_turn>model\n")
    if base_template == FALLBACK_TEMPLATE:
        opener = ("{{- if not (and .Messages (eq (index .Messages 0).Role \"system\")) }}"
                  "<|system|>\n{{ $system }}\n{{ end }}") if system_prompt else ""
        system = f"{{{{- $system := {_go_string(system_prompt)} }}}}" if system_prompt else ""
        return (system + opener + "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}"
                f'{{{{ if eq .Role "assistant" }}}}{eos_token}{{{{ end }}}}\n{{{{ end }}}}<|assistant|>\n')
    raise EcombotError("--format ollama: the base model's own chat template has no Ollama form in ecombot (Ollama "
                       "uses Go templates); use --format gguf, whose metadata holds the template for llama.cpp --jinja")


def modelfile(source: ExportSource, files: dict) -> str:
    stops = "".join(f'PARAMETER stop "{token}"\n' for token in source.record["stop_tokens"])
    adapter = f"ADAPTER ./{files['adapter_file']}\n" if "adapter_file" in files else ""
    template = go_template(source.base_template, source.record["system_prompt"], source.tokenizer.eos_token)
    if '"""' in template:
        raise EcombotError('--format ollama: the system prompt contains """, which a Modelfile cannot quote')
    return (f"# {Path(source.record['run']).name} ({source.version}), exported by ecombot. {GEMMA_TERMS}\n"
            f"FROM ./{files['model_file']}\n{adapter}"
            f'TEMPLATE """{template}"""\n{stops}'
            f"PARAMETER temperature 0\nPARAMETER num_predict {source.record['answer_token_limit']}\n")


def export_ollama(run: str | Path, output: str | Path, version: str | None = None, quant: str | None = None,
                  overwrite: bool = False) -> dict:
    """The LoRA over its base GGUF when the run allows it (a plain LoRA), else the merged model as one GGUF."""
    if quant is not None:
        check_quant(quant)

    def fill(folder: Path) -> dict:
        source = export_source(run, version)
        go_template(source.base_template, None, "")  # refuse an unsupported template before converting anything
        if quant is None and source.method == "lora":
            files = write_lora_gguf(source, folder)
            files["model_file"] = files["base_file"]
        else:
            name = gguf_file_name(source, quant or "f16")
            files = {"model_file": name, "quant": quant or "f16",
                     "gguf": write_merged_gguf(source, quant or "f16", folder / name)}
        (folder / MODELFILE).write_text(modelfile(source, files), encoding="utf-8")
        return {"format": "ollama", "modelfile": MODELFILE, **files, **source.record}

    return build_export(output, overwrite, fill, ollama_usage)


def ollama_usage(record: dict) -> str:
    name = Path(record["run"]).name
    return (f"# Ollama export of {name} ({record['version']})\n\n"
            f"```sh\nollama create {name} -f Modelfile\nollama run {name}\n```\n\n"
            f"`{record['model_file']}`" + (f" with the LoRA `{record['adapter_file']}`" if "adapter_file" in record
                                           else f" ({record['quant']}, adapter merged in)") +
            ". The Modelfile's TEMPLATE is the training chat template written as a Go template, with the store's "
            "system prompt as the default first message; Ollama adds the BOS token itself. " + GEMMA_TERMS + "\n"
            + grounded_note(record))
