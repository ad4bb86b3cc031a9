"""Fused CPU kernels for training (fused_cpu.c), in bf16 and in fp32: Gemma's RMSNorm, the MLP's GELU(gate) * up,
and the output head's online softmax over one vocabulary chunk; and, fp32 only, the row quantization of int8 input
gradients (speedups/int8.py).

Why by hand: on a CPU, eager PyTorch runs every elementwise op as its own pass over memory, and a packed step of
Gemma 3 270M runs ~110 norms and 18 MLP activations forward and backward. Fused here, one norm (576 x 640, forward
+ backward) takes 0.13 ms instead of 0.87 ms and one GELU(gate) * up (576 x 2048) 1.0 ms instead of 3.5 ms (2-core
Xeon, bf16). torch.compile fuses the same ops but costs 3-6 s per process before the first step even with a warm
cache (54 s cold for the decoder layers at stop 9), more than a whole training run of a few hundred conversations
on this CPU; these kernels compile in ~0.3 s once per machine and are cached under $ECOMBOT_HOME/kernels.

The library is built with the system's C compiler ($CC, else cc/gcc). Its OpenMP calls are linked to the OpenMP
runtime PyTorch already loaded, so both share one thread pool (torch.set_num_threads applies). Without a compiler,
on a failed build, or with ECOMBOT_CPU_KERNELS=0, everything runs as PyTorch ops (same values up to rounding:
tests/test_kernels.py); `status()` says which and why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ecombot import atomic

SOURCE = Path(__file__).with_name("fused_cpu.c")
KERNELS = SOURCE.with_name("fused_cpu_kernels.h")  # the kernels, included by SOURCE once per storage type
# each kernel's exported name is its name and the suffix of its storage type: bf16 (uint16 in C) or fp32
SUFFIXES = {torch.bfloat16: "", torch.float32: "_f32"}
KERNEL_NAMES = ("rms_norm_forward", "rms_norm_backward", "gelu_mul_forward", "gelu_mul_backward", "softmax_chunk")
# -fno-math-errno / -fno-trapping-math let the compiler vectorise floor and the comparisons; 512-bit vectors where
# the CPU has them (x86's default tuning stops at 256: GELU x up 1.37 -> 1.0 ms with them).
COMPILE_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC",
                 *(["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else [])]
log = logging.getLogger(__name__)
_why_off = ""  # why the library could not be used (set when library() returns None)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _loaded_openmp_runtime() -> Path | None:
    """PyTorch's GNU OpenMP runtime, as loaded in this process, so the kernels join its thread pool (other
    libraries may have loaded their own copies, e.g. scikit-learn's)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    paths = {Path(line.split()[-1]) for line in maps if "libgomp" in line and line.split()[-1].startswith("/")}
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    mine = sorted(path for path in paths if path.parent.resolve() == torch_lib)
    return mine[0] if mine else None


def _cpu_signature() -> str:
    """What -march=native depends on, so a cache shared between machines never hands one CPU another's build."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        return "\n".join(line for line in info.splitlines() if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor() or platform.machine()


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} ... failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _build(compiler: str) -> Path:
    from ecombot.home import ecombot_home

    openmp = _loaded_openmp_runtime()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), KERNELS.read_text(), *COMPILE_FLAGS, version, _cpu_signature(),
                                    str(openmp)]).encode()).hexdigest()[:16]
    target = ecombot_home() / "kernels" / key / "fused_cpu.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "fused_cpu.o", Path(tmp) / "fused_cpu.so"
        # Compiled with OpenMP, but linked to the runtime already loaded rather than the compiler's own libgomp:
        # two OpenMP runtimes in one process would each keep a pool of spinning threads.
        _run([compiler, *COMPILE_FLAGS, "-fopenmp" if openmp else "-fopenmp-simd", "-c", str(SOURCE), "-o", str(obj)])
        _run([compiler, "-shared", str(obj), *([str(openmp), f"-Wl,-rpath,{openmp.parent}"] if openmp else []),
              "-o", str(lib)])
        atomic.move_into_place(lib, target)  # processes building at once (DDP ranks) each see a whole library
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (then callers use PyTorch ops)."""
    global _why_off
    if os.environ.get("ECOMBOT_CPU_KERNELS", "1") == "0":
        _why_off = "switched off (ECOMBOT_CPU_KERNELS=0)"
        return None
    compiler = _compiler()
    if compiler is None:
        _why_off = "no C compiler found (set CC, or install gcc)"
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _why_off = f"build failed: {exc}"
        log.warning("fused CPU kernels unavailable, using PyTorch ops: %s", exc)
        return None
    pointer, count = ctypes.c_void_p, ctypes.c_int64
    arguments = dict(zip(KERNEL_NAMES, ([pointer, pointer, pointer, pointer, count, count, ctypes.c_float],
                                        [pointer, pointer, pointer, pointer, pointer, count, count],
                                        [pointer, pointer, pointer, count],
                                        [pointer, pointer, pointer, pointer, pointer, count],
                                        [pointer, count, pointer, pointer, pointer, pointer, count, count])))
    for name, types in arguments.items():
        for suffix in SUFFIXES.values():
            getattr(lib, name + suffix).argtypes = types
    # fp32 only (speedups/int8.py)
    lib.quantize_rows_i8.argtypes = [pointer, pointer, pointer, pointer, count, count, ctypes.c_float]
    lib.dequantize_rows_i32.argtypes = [pointer, pointer, pointer, count, count]
    return lib


def status() -> str:
    """'on', or 'off: <why>' (recorded in a training run's results)."""
    return "on" if library() is not None else f"off: {_why_off}"


def usable(*tensors: torch.Tensor) -> bool:
    """True when the kernels apply: CPU tensors all bf16 or all fp32 (other dtypes and devices keep PyTorch's ops)."""
    return (bool(tensors) and tensors[0].dtype in SUFFIXES
            and all(t.device.type == "cpu" and t.dtype == tensors[0].dtype for t in tensors) and library() is not None)


def _kernel(name: str, dtype: torch.dtype):
    return getattr(library(), name + SUFFIXES[dtype])


def rms_norm_forward(x: torch.Tensor, gain: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * rsqrt(mean(x^2) + eps) * gain over the last dimension, the rsqrt per row as (..., 1) fp32)."""
    x, gain = x.contiguous(), gain.to(torch.float32).contiguous()
    y, scale = torch.empty_like(x), torch.empty((*x.shape[:-1], 1), dtype=torch.float32)
    _kernel("rms_norm_forward", x.dtype)(x.data_ptr(), gain.data_ptr(), y.data_ptr(), scale.data_ptr(),
                               x.numel() // x.shape[-1], x.shape[-1], eps)
    return y, scale


def rms_norm_backward(x: torch.Tensor, scale: torch.Tensor, gain: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    x, grad_y, gain = x.contiguous(), grad_y.contiguous(), gain.to(torch.float32).contiguous()
    grad_x = torch.empty_like(x)
    _kernel("rms_norm_backward", x.dtype)(x.data_ptr(), scale.contiguous().data_ptr(), gain.data_ptr(), grad_y.data_ptr(),
                                grad_x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1])
    return grad_x


def gelu_mul_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gelu(gate, approximate="tanh") * up."""
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    _kernel("gelu_mul_forward", gate.dtype)(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel())
    return out


def gelu_mul_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grad, gate, up = grad.contiguous(), gate.contiguous(), up.contiguous()
    grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
    _kernel("gelu_mul_backward", gate.dtype)(grad.data_ptr(), gate.data_ptr(), up.data_ptr(), grad_gate.data_ptr(),
                                grad_up.data_ptr(), gate.numel())
    return grad_gate, grad_up


def softmax_chunk(logits: torch.Tensor, probs: torch.Tensor, top: torch.Tensor, total: torch.Tensor,
                  rescale: torch.Tensor) -> None:
    """One vocabulary chunk of the head's online softmax, in place (see fused_cpu.c softmax_chunk): `logits`
    (rows x cols, rows may be strided), `probs` (contiguous, same shape and dtype) gets exp(logits - new top);
    `top`, `total`, `rescale` are contiguous fp32 per-row vectors."""
    assert logits.stride(1) == 1 and probs.is_contiguous() and probs.shape == logits.shape
    _kernel("softmax_chunk", logits.dtype)(logits.data_ptr(), logits.stride(0), probs.data_ptr(), top.data_ptr(), total.data_ptr(),
                            rescale.data_ptr(), logits.shape[0], logits.shape[1])


def quantize_rows_i8(x: torch.Tensor, col_scales: torch.Tensor | None, q: torch.Tensor, row_scales: torch.Tensor,
                     levels: int) -> None:
    """q (int8) = round(x * col_scales / row_scales[row]), row_scales = max |x * col_scales| / levels per row (see
    fused_cpu.c); x (rows, cols) contiguous fp32, col_scales (cols,) fp32 or None."""
    assert x.is_contiguous() and x.dtype == torch.float32 and q.is_contiguous()
    library().quantize_rows_i8(x.data_ptr(), None if col_scales is None else col_scales.data_ptr(), q.data_ptr(),
                               row_scales.data_ptr(), x.shape[0], x.shape[1], levels)


def dequantize_rows_i32(acc: torch.Tensor, row_scales: torch.Tensor, out: torch.Tensor) -> None:
    """out (fp32, may share acc's memory) = acc (int32) * row_scales[row]."""
    assert acc.is_contiguous() and out.is_contiguous() and acc.shape == out.shape
    library().dequantize_rows_i32(acc.data_ptr(), row_scales.data_ptr(), out.data_ptr(), acc.shape[0], acc.shape[1])
