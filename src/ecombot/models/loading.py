"""Load a base model (optionally 4-bit for QLoRA) and a run's adapter on top of it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ecombot import speedups
from ecombot.errors import ModelError
from ecombot.models.device import pick_device, resolve_precision
from ecombot.models.registry import bf16_weights, resolve_model
from ecombot.models.template import ensure_chat_template, stop_token_ids
from ecombot.models.vocab import mark_never_output
from ecombot.run_dir import RunDir

def load_tokenizer(model_dir: Path):
    """The model's tokenizer with a chat template and a pad token, read once per process while the directory's files
    stay as they are: Gemma's 262k-entry tokenizer.json takes ~3 s to read, and a `learn` round (train, then score),
    an evaluation and the quickstart each read it several times. Shared: a caller that changes it (export's chat
    template) changes `copy.copy(tokenizer)`."""
    model_dir = Path(model_dir).resolve()
    files = sorted(f for f in model_dir.iterdir() if f.is_file()) if model_dir.is_dir() else []
    return _read_tokenizer(model_dir, tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files))


@functools.lru_cache(maxsize=2)
def _read_tokenizer(model_dir: Path, files: tuple):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ensure_chat_template(tokenizer, AutoConfig.from_pretrained(str(model_dir)).model_type)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_dir: Path, dtype: torch.dtype = torch.float32, quantize_4bit: bool = False,
                    device: str | None = None):
    """Full-precision weights, or NF4 4-bit weights (bitsandbytes; CPU and CUDA) for QLoRA."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or pick_device()
    kwargs: dict = {"dtype": dtype}
    if quantize_4bit:
        compute = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=torch.uint8)
        kwargs["device_map"] = {"": device}
        # Read the file into memory instead of mapping it: with the mapping, the pages the quantizer read stayed
        # resident (Gemma 3 270M from its bf16 copy: load peak 1,720 -> 1,448 MB, after loading 1,239 -> 880 MB),
        # which put QLoRA's peak above LoRA's.
        kwargs["disable_mmap"] = True
    weights = (bf16_weights(model_dir) if dtype == torch.bfloat16 else None) or model_dir
    try:
        model = AutoModelForCausalLM.from_pretrained(str(weights), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_dir}: cannot load the model ({exc})") from None
    # Adapters record this as their base model: the directory with the tokenizer, not the bf16 weights' copy.
    model.name_or_path = model.config._name_or_path = str(model_dir)
    mark_never_output(model, stop_token_ids(load_tokenizer(model_dir)))  # tokens no answer may contain
    if not quantize_4bit:
        model.to(device)
    if weights != model_dir and device == "cpu" and not quantize_4bit:
        # bf16 weights loaded from the copy still map its file. Copied out into ordinary memory, they train faster
        # (8 steps: 10.8-11.8 s mapped vs 9.5-10.0 s). The load peak stays far below the fp32 load's.
        for param in model.parameters():
            if type(param) is torch.nn.Parameter:
                param.data = param.data.clone()
    return model


def load_adapter_base(model_dir: Path, method: str, dtype: torch.dtype = torch.float32, device: str | None = None):
    """The base weights an adapter was trained against, as plain Linear layers: for QLoRA the NF4 weights
    dequantized (measured on a 40-step QLoRA run of Gemma 3 270M: held-out loss 0.699 on them, 0.850 with the same
    adapter on the original weights), else the weights themselves."""
    if method != "qlora":
        return load_base_model(model_dir, dtype=dtype, device=device)
    return load_base_model(model_dir, dtype=dtype, quantize_4bit=True, device=device).dequantize(dtype=dtype)


def base_model_spec(model: str | None, adapter: str | Path | None) -> str:
    """The base model that answers: `--model` when given, else the one the adapter's run trained on, else the
    embedded default (the one rule of chat, serve, evaluate and both engines)."""
    from ecombot.models.registry import DEFAULT_MODEL

    if model or not adapter:
        return model or DEFAULT_MODEL
    RunDir(adapter).check_adapter()
    return RunDir(adapter).base_model()


# PEFT keeps each adapter in a torch ModuleDict under its name, and a module name may not hold "."; the names users
# see (a run folder such as "run-v1.2", an API model id) may. Stored with a look-alike character, shown as given.
PEFT_DOT = "\u2024"


def peft_adapter_name(name: str) -> str:
    return name.replace(".", PEFT_DOT)


def adapter_display_name(peft_name: str) -> str:
    return peft_name.replace(PEFT_DOT, ".")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_dir: Path
    device: str
    precision: str
    adapter_dir: Path | None = None  # as given: a run, or the root of a run's versions
    adapter_version: str | None = None  # the version loaded from it (its live one)


def load_for_inference(model: str | None = None, adapter: str | Path | None = None,
                       precision: str = "auto", adapter_name: str = "default", live: bool = True) -> LoadedModel:
    """Base model (+ adapter) in the fastest exact-enough dtype: bf16 weights where the hardware has bf16.
    A run's live version is loaded (`ecombot learn`); `live=False` loads the adapter files in `adapter` itself."""
    from peft import PeftModel

    adapter_dir = Path(adapter) if adapter else None
    source, version = None, None
    if adapter_dir is not None:
        version = RunDir(adapter_dir).live_version() if live else None
        source = RunDir(adapter_dir).version(version) if version else RunDir(adapter_dir)
        source.check_adapter()
    spec = base_model_spec(model, adapter_dir)
    model_dir = resolve_model(spec)
    device = pick_device()
    precision = resolve_precision(precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokenizer = load_tokenizer(model_dir)
    method = RunDir(adapter_dir).method() if adapter_dir else "lora"
    base = load_adapter_base(model_dir, method, dtype=dtype, device=device)
    if adapter_dir is not None:
        try:
            base = PeftModel.from_pretrained(base, str(source.path),
                                              adapter_name=peft_adapter_name(adapter_name))
        except Exception as exc:
            raise ModelError(f"{adapter_dir}: the adapter does not fit base model {spec} ({type(exc).__name__}: {exc})") from None
    base.eval()
    speedups.apply(base, mode="decode")  # scoring (held-out loss) with the fast attention and head
    return LoadedModel(base, tokenizer, model_dir, device, precision, adapter_dir, version)
