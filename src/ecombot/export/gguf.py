"""GGUF exports for llama.cpp (and Ollama, which runs llama.cpp): the merged model as one GGUF file, or the adapter
alone as a LoRA GGUF beside the base GGUF it was trained against.

Both carry the training chat template (the run's system prompt as its default first message) and the end-of-turn
token in their metadata, so llama.cpp's `--jinja` chat and llama-server render the prompt the adapter was trained on
and stop at the end of the answer.

Why `lora-gguf` is the CPU deployment to prefer for the embedded default model: that model ships as a Q4_K_M GGUF and
ecombot trains against exactly its dequantized weights, so the original Q4_K_M file plus the adapter (applied at run
time, unquantized) is the trained model with no merge and no second rounding of the weights; a merged model
quantized again to q4_k_m rounds the adapter's small delta together with the base.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ecombot.errors import EcombotError
from ecombot.models import llama_cpp
from ecombot.export.merged import ExportSource, export_source, grounded_note, save_merged
from ecombot.export.target import GEMMA_TERMS, build_export

QUANTS = llama_cpp.CONVERTER_TYPES + tuple(llama_cpp.QUANTIZER_FTYPES)
ADAPTER_FILE = "adapter.gguf"


def check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise EcombotError(f"--quant {quant}: choose one of {', '.join(QUANTS)}")


def write_merged_gguf(source: ExportSource, quant: str, target: Path) -> dict:
    """The adapter merged into its base, converted by llama.cpp's converter (f16, q8_0) and quantizer (q4_k_m)."""
    check_quant(quant)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".merged-") as tmp:
        tmp = Path(tmp)
        save_merged(source, tmp / "hf")
        converted = tmp / "converted.gguf"
        outtype = quant if quant in llama_cpp.CONVERTER_TYPES else "f16"
        llama_cpp.run_converter("convert_hf_to_gguf.py", [str(tmp / "hf"), "--outfile", str(converted),
                                                          "--outtype", outtype])
        if quant in llama_cpp.QUANTIZER_FTYPES:
            marked = tmp / "marked.gguf"
            llama_cpp.rewrite_metadata(converted, marked, source.end_of_turn)
            llama_cpp.quantize(marked, target, quant)
        else:
            llama_cpp.rewrite_metadata(converted, target, source.end_of_turn)
    return checked_metadata(target, source)


def checked_metadata(path: Path, source: ExportSource) -> dict:
    """What the file says about the chat and its stops, refused if it lost the training template or the stop token."""
    metadata = llama_cpp.gguf_metadata(path)
    template = metadata.get("tokenizer.chat_template")
    if template != source.tokenizer.chat_template:
        raise EcombotError(f"{path.name}: the GGUF's chat template is not the training template (llama.cpp's "
                           "converter changed it); not exporting a bot that would be prompted differently")
    eot = metadata.get("tokenizer.ggml.eot_token_id")
    if source.end_of_turn is not None and eot != source.end_of_turn:
        raise EcombotError(f"{path.name}: end-of-turn token {eot}, expected {source.end_of_turn}")
    return {"architecture": metadata.get("general.architecture"), "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
            "eot_token_id": eot, "chat_template": "training", "size_mb": round(path.stat().st_size / 2**20, 1)}


def write_lora_gguf(source: ExportSource, folder: Path) -> dict:
    """adapter.gguf (the LoRA, f32: no rounding of the delta) and the base GGUF it applies to, the latter copied with
    the training template and end-of-turn token added to its metadata (its tensors untouched)."""
    if source.method != "lora":
        raise EcombotError(f"--format lora-gguf: this run trained a {source.method} adapter; llama.cpp applies plain "
                           "LoRA only" + (" and a QLoRA adapter learnt against NF4 weights that no GGUF holds"
                                          if source.method == "qlora" else " (DoRA's magnitude vectors have no GGUF form)")
                           + ". Use --format gguf (merged into the weights it was trained against).")
    trained_from = llama_cpp.base_gguf(source.model_dir)
    if trained_from is not None:
        kind, base_name = "the GGUF it was trained from", trained_from.name
    else:  # a Transformers base: llama.cpp's converter makes it a GGUF, at full precision
        kind, base_name = "converted by llama.cpp's converter (f16)", "base-f16.gguf"
    llama_cpp.rewrite_metadata(llama_cpp.runnable_base(source.model_dir), folder / base_name, source.end_of_turn,
                               source.tokenizer.chat_template)
    llama_cpp.run_converter("convert_lora_to_gguf.py", [str(source.adapter_dir), "--base", str(source.model_dir),
                                                        "--outfile", str(folder / ADAPTER_FILE), "--outtype", "f32"])
    return {"base_file": base_name, "base_source": kind, "adapter_file": ADAPTER_FILE,
            "base": checked_metadata(folder / base_name, source),
            "adapter_size_mb": round((folder / ADAPTER_FILE).stat().st_size / 2**20, 1)}


def gguf_file_name(source: ExportSource, quant: str) -> str:
    return f"{source.run.name}-{source.version}-{quant}.gguf"


def export_gguf(run: str | Path, output: str | Path, version: str | None = None, quant: str = "f16",
                overwrite: bool = False) -> dict:
    check_quant(quant)

    def fill(folder: Path) -> dict:
        source = export_source(run, version)
        name = gguf_file_name(source, quant)
        gguf = write_merged_gguf(source, quant, folder / name)
        return {"format": "gguf", "quant": quant, "file": name, "gguf": gguf, **source.record}

    return build_export(output, overwrite, fill, gguf_usage)


def export_lora_gguf(run: str | Path, output: str | Path, version: str | None = None, overwrite: bool = False) -> dict:
    def fill(folder: Path) -> dict:
        source = export_source(run, version)
        return {"format": "lora-gguf", **write_lora_gguf(source, folder), **source.record}

    return build_export(output, overwrite, fill, gguf_usage)


def gguf_usage(record: dict) -> str:
    if record["format"] == "gguf":
        files = f"`{record['file']}`: {record['base_model']} with the {record['method']} adapter merged in, {record['quant']}."
        run = f"-m {record['file']}"
    else:
        files = (f"`{record['base_file']}`: the base model ({record['base_source']}), and `{record['adapter_file']}`: "
                 "the LoRA adapter alone, applied by llama.cpp at run time (no merge, no requantisation).")
        run = f"-m {record['base_file']} --lora {record['adapter_file']}"
    return (f"# GGUF export of {Path(record['run']).name} ({record['version']})\n\n{files} {GEMMA_TERMS}\n\n"
            "The GGUF metadata holds the chat template the adapter was trained with (the store's system prompt as the "
            f"default first message) and the end-of-turn stop token ({', '.join(record['stop_tokens'])}).\n\n"
            f"```sh\nllama-server {run} --jinja --port 8080   # OpenAI-compatible API\n"
            f"llama-cli {run} --jinja -cnv\n```\n{grounded_note(record)}")

