"""llama.cpp's own tools, used as they are: the HF→GGUF and LoRA→GGUF converters, the quantizer, and the GGUF files
the llama.cpp engine and the exports run (the base GGUF a model came from, a run's adapter as a LoRA GGUF).

Why not a GGUF writer of our own: the converters are where llama.cpp decides tensor names, the tokenizer's
pre-tokenizer and the architecture's quirks (Gemma's norm offset, tied embeddings), and they move with each
llama.cpp release; a re-implementation drifts from the runtime that reads the file. The converter scripts ship in
llama.cpp's sources, which the llama-cpp-python source distribution vendors, so they are fetched once from PyPI
(no compiler needed) and kept in ecombot's home, matching the installed llama-cpp-python when there is one.
`$ECOMBOT_LLAMA_CPP` may name a llama.cpp source tree or that source distribution instead (offline machines).
Quantizing below q8_0 (q4_k_m) needs llama.cpp compiled, i.e. llama-cpp-python installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ecombot.errors import EcombotError
from ecombot.home import ecombot_home
from ecombot.speedups.cpu import cpu_flags

LLAMA_CPP_PYTHON = "0.3.36"  # the converters used when llama-cpp-python is not installed (tested with this one)
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
CONVERTER_DIRS = ("conversion/", "gguf-py/")
# the llama_ftype values of llama.h for the quantizations `--quant` offers beyond what the converter writes itself
QUANTIZER_FTYPES = {"q4_k_m": 15}
CONVERTER_TYPES = ("f16", "q8_0")


def _installed_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:
        return None


def converter_dir() -> Path:
    """A directory holding convert_hf_to_gguf.py, convert_lora_to_gguf.py and their packages."""
    override = os.environ.get("ECOMBOT_LLAMA_CPP")
    if override:
        path = Path(override).expanduser()
        if path.is_dir():
            if not (path / CONVERTER_FILES[0]).is_file():
                raise EcombotError(f"$ECOMBOT_LLAMA_CPP={path}: not a llama.cpp source tree (no {CONVERTER_FILES[0]})")
            return path
        if path.is_file():
            return _extracted(path, path.name.removesuffix(".tar.gz"))
        raise EcombotError(f"$ECOMBOT_LLAMA_CPP={path}: no such directory or file")
    version = _installed_version() or LLAMA_CPP_PYTHON
    return _extracted(None, f"llama-cpp-python-{version}", version)


def _extracted(sdist: Path | None, name: str, version: str | None = None) -> Path:
    from ecombot.models.registry import build_once

    def build(folder: Path) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            source = sdist or _download_sdist(version, Path(tmp))
            _extract_converters(source, folder)
        return {"source": str(sdist or f"llama-cpp-python=={version} (PyPI)")}

    return build_once(ecombot_home() / "tools" / name, build)


def _download_sdist(version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
               "--no-binary", ":all:", "--quiet", "--dest", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise EcombotError("GGUF export needs llama.cpp's converter, fetched once from PyPI (the llama-cpp-python "
                           f"{version} source distribution), and the download failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}. On a machine without PyPI, "
                           "set ECOMBOT_LLAMA_CPP to a llama.cpp source tree or to that .tar.gz")
    return found[0]


def _extract_converters(sdist: Path, folder: Path) -> None:
    """Only the converter scripts and their Python packages (2 MB of a 76 MB archive)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as archive:
        wanted = []
        for member in archive.getmembers():
            parts = member.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and (parts[1] in CONVERTER_FILES or parts[1].startswith(CONVERTER_DIRS)) \
                    and (member.isfile() or member.isdir()):
                member.name = parts[1]
                wanted.append(member)
        if not any(m.name == CONVERTER_FILES[0] for m in wanted):
            raise EcombotError(f"{sdist}: no vendor/llama.cpp/{CONVERTER_FILES[0]} in this archive")
        archive.extractall(folder, members=wanted, filter="data")


def run_converter(script: str, args: list[str]) -> None:
    """Run one of llama.cpp's converters with this Python (it needs torch, numpy, transformers: ours)."""
    tools = converter_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tools / "gguf-py"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(tools / script), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise EcombotError(f"llama.cpp's {script} failed:\n{tail}")


def gguf_module():
    """gguf-py as vendored with the converter (it writes what that llama.cpp reads)."""
    path = str(converter_dir() / "gguf-py")
    if path not in sys.path:
        sys.path.insert(0, path)
    import gguf

    return gguf


def rewrite_metadata(source: Path, output: Path, end_of_turn: int | None, chat_template: str | None = None) -> None:
    """Copy a GGUF file with `tokenizer.ggml.eot_token_id` (and the chat template, when given) set, its tensors
    untouched, by gguf-py's own gguf_new_metadata. The converter records only EOS, and a runtime that does not guess
    the end-of-turn token from its text would run past the end of the answer; a base model's GGUF has no template."""
    gguf = gguf_module()
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(source, "r")
    new = {}
    if end_of_turn is not None:
        new[gguf.Keys.Tokenizer.EOT_ID] = MetadataDetails(gguf.GGUFValueType.UINT32, end_of_turn)
    if chat_template is not None:
        new[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(gguf.GGUFValueType.STRING, chat_template)
    writer = gguf.GGUFWriter(output, arch=reader.fields[gguf.Keys.General.ARCHITECTURE].contents(),
                             endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    copy_with_new_metadata(reader, writer, new, remove_metadata=[])


def gguf_metadata(path: Path) -> dict:
    """The GGUF file's metadata without the vocabulary arrays (what the export record and the tests check)."""
    gguf = gguf_module()
    vocabulary = {gguf.Keys.Tokenizer.LIST, gguf.Keys.Tokenizer.SCORES, gguf.Keys.Tokenizer.TOKEN_TYPE,
                  gguf.Keys.Tokenizer.MERGES}
    return {name: field.contents() for name, field in gguf.GGUFReader(path, "r").fields.items()
            if not name.startswith("GGUF.") and name not in vocabulary}


def quantize(source: Path, output: Path, quant: str) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`), through the installed llama-cpp-python."""
    try:
        llama_cpp = bindings()
    except EcombotError:
        raise EcombotError(f"--quant {quant} needs llama.cpp's quantizer, compiled by llama-cpp-python: "
                           "pip install 'ecombot[llama-cpp]' (several minutes of compiling), or export "
                           f"--quant {' / '.join(CONVERTER_TYPES)}") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZER_FTYPES[quant]
    params.nthread = os.cpu_count() or 1
    with quiet_stderr():  # else a "falling back to q5_0" line for each of 90 tensors whose rows do not fit Q4_K
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), params)
    if status != 0 or not output.is_file():
        raise EcombotError(f"llama.cpp could not quantize {source.name} to {quant} (status {status})")


def bindings():
    """llama-cpp-python's ctypes bindings."""
    try:
        import llama_cpp
    except ImportError:
        raise EcombotError("running a GGUF needs llama.cpp, compiled by llama-cpp-python: "
                           "pip install 'ecombot[llama-cpp]' (several minutes of compiling)") from None
    import logging

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp's C code writes to the process's stderr while it loads (a line per tensor, warnings about Gemma's
    vocabulary and the SWA cache a chat user cannot act on), past llama-cpp-python's log callback: the file
    descriptor is pointed at /dev/null meanwhile, as llama-cpp-python's own `verbose=False` does. Failures are
    reported by the caller from the return value."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def model_params():
    """llama.cpp's default model parameters, less the extra weight buffers on CPUs with AMX: with the llama.cpp of
    llama-cpp-python 0.3.36, a Q4_K_M model in the AMX buffer crashes the process with a segmentation fault at its
    first decode (seen on a 2-core Xeon with AMX; the f16 GGUF and the same Q4_K_M file without the extra buffers
    answer)."""
    params = bindings().llama_model_default_params()
    if "amx_tile" in cpu_flags():
        params.use_extra_bufts = False
    return params


def open_gguf(model: Path, lora: Path | None = None, n_ctx: int = 4096, logits_all: bool = False):
    """A llama-cpp-python `Llama` of a GGUF file (and a LoRA GGUF over it), quiet, on every core: llama.cpp as its
    users run it (the export checks and the benchmarks' "raw llama.cpp"). llama-cpp-python has no argument for the
    model parameters, so its defaults are swapped for `model_params()` while it loads."""
    llama_cpp = bindings()
    import llama_cpp.llama_cpp as ctypes_api

    defaults = ctypes_api.llama_model_default_params
    ctypes_api.llama_model_default_params = model_params
    try:
        return llama_cpp.Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=n_ctx,
                               n_threads=os.cpu_count() or 1, logits_all=logits_all, verbose=False)
    finally:
        ctypes_api.llama_model_default_params = defaults


def base_gguf(model_dir: Path) -> Path | None:
    """The GGUF file a cached model was converted from (the embedded default, or a .gguf given as --model)."""
    from ecombot.models.registry import MARKER

    marker = model_dir / MARKER
    if not marker.is_file():
        return None
    gguf = json.loads(marker.read_text(encoding="utf-8")).get("gguf")
    return Path(gguf) if gguf and Path(gguf).is_file() else None


def runnable_base(model_dir: Path) -> Path:
    """The GGUF llama.cpp runs for a base model: the file it came from (the embedded Q4_K_M: what adapters are
    trained against), else the Transformers weights converted once to f16 by llama.cpp's converter."""
    from ecombot.models.registry import build_once

    found = base_gguf(model_dir)
    if found is not None:
        return found

    def convert(folder: Path) -> dict:
        folder.mkdir(parents=True)
        run_converter("convert_hf_to_gguf.py", [str(model_dir), "--outfile", str(folder / "model.gguf"),
                                                "--outtype", "f16"])
        return {"source": str(model_dir)}

    return build_once(_cache("models", model_dir), convert) / "model.gguf"


def adapter_gguf(adapter_dir: Path, model_dir: Path) -> Path:
    """A LoRA adapter (PEFT files) as a llama.cpp LoRA GGUF (f32: no rounding of the delta), converted once and
    kept by the adapter weights' content (a new version of a run is a new file)."""
    from ecombot.models.registry import build_once

    def convert(folder: Path) -> dict:
        folder.mkdir(parents=True)
        run_converter("convert_lora_to_gguf.py", [str(adapter_dir), "--base", str(model_dir),
                                                  "--outfile", str(folder / "adapter.gguf"), "--outtype", "f32"])
        return {"source": str(adapter_dir)}

    return build_once(_cache("adapters", adapter_dir / "adapter_model.safetensors", model_dir), convert) / "adapter.gguf"


def _cache(kind: str, *sources: Path) -> Path:
    """$ECOMBOT_HOME/gguf/KIND/<digest>: one folder per content (files) or location (directories)."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(str(source.resolve()).encode())
        if source.is_file():
            with source.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return ecombot_home() / "gguf" / kind / digest.hexdigest()[:20]


def greedy(llm, prompt_ids: list[int], max_new_tokens: int, stops: set[int],
           never: list[int] | None = None) -> list[int]:
    """llama.cpp's greedy answer to prompt token ids, ending with the stop token when it stopped by itself; `never`:
    tokens left out (an export's `suppress_tokens`, as a user gives them to llama-server as `logit_bias`)."""
    from llama_cpp import LogitsProcessorList

    def leave_out(_ids, scores):
        scores[never] = -float("inf")
        return scores

    processors = LogitsProcessorList([leave_out]) if never else None
    answer = []
    for token in llm.generate(prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True,
                              logits_processor=processors):
        answer.append(token)
        if token in stops or len(answer) >= max_new_tokens:
            break
    return answer


def answer_loss(llm, examples, never: list[int] | None = None) -> tuple[float, int]:
    """Summed cross-entropy of the supervised (answer) tokens of encoded conversations (`models.Encoded`), and their
    count, from llama.cpp's logits (a model opened with logits_all=True): what ecombot's held-out loss computes, with
    the tokens `never` left out as it leaves them out (models/vocab.py answer_cross_entropy)."""
    import numpy as np

    from ecombot.models.vocab import answer_cross_entropy

    total, count = 0.0, 0
    for example in examples:
        llm.reset()
        llm.eval(example.input_ids)
        labels = np.asarray(example.labels)
        positions = np.nonzero(labels[1:] != -100)[0]  # the logits at t predict the token at t + 1
        total += float(answer_cross_entropy(llm.scores[positions], labels[positions + 1], never).sum())
        count += len(positions)
    return total, count
