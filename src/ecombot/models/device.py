"""Where to run and in which precision (CUDA when present, bf16 where the hardware does it natively), and which
thread runs PyTorch on several cores."""

from __future__ import annotations

import threading

import torch

from ecombot.errors import ConfigError
from ecombot.speedups import int8
from ecombot.speedups.cpu import cpu_has_native_bf16


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(preference: str = "auto", device: str | None = None, training: bool = False) -> str:
    """'bf16', 'fp32' or, for training on a CPU, 'int8' (fp32 weights and adapter, the frozen base's products in
    int8: speedups/int8.py). auto: bf16 on CUDA cards that support it and on CPUs with native bf16; for training on
    other x86 CPUs with AVX2 (and the C kernels) int8: 1.07-1.25x fp32's steps, each step's gradient as close to
    fp32's as bf16's (README, Performance, "Int8 input gradients"); fp32 to answer."""
    device = device or pick_device()
    if preference == "int8":
        if not training:
            return "fp32"  # what int8 training's weights are: answering and scoring use them as they are
        if device != "cpu" or not int8.pays():
            raise ConfigError("config field 'precision': int8 is for training on an x86 CPU with AVX2 and a C "
                              f"compiler (this run: {device}{'' if device != 'cpu' else ', ' + int8.why_not()})")
        return preference
    if preference != "auto":
        return preference
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if cpu_has_native_bf16():
        return "bf16"
    return "int8" if training and int8.pays() else "fp32"


def one_parallel_thread() -> None:
    """Keep the calling thread's PyTorch thread count; every thread that runs its first PyTorch op from now on
    (a server's request threads embedding a question, a watcher loading weights) runs on one core.

    Why: PyTorch's CPU ops run on OpenMP (libgomp), which keeps a pool of threads for each thread that ran a parallel
    op; once the pools hold more threads than the machine has cores, libgomp stops spin-waiting between parallel
    regions and every region pays a wake-up. Measured on the 2-core Xeon (AVX-512): a 2048 x 640 fp32 row product
    0.09 ms on the only parallel thread, 0.20 ms once a second thread had run one; a decoding step of Gemma 3 270M
    35 vs 59-75 ms. How: PyTorch reads a thread's count at its first op, from a process-wide value that
    torch.set_num_threads sets along with the caller's own; set from a short-lived thread, it leaves this thread's.
    """
    torch.get_num_threads()  # this thread's count is fixed now, before the process-wide value changes
    setter = threading.Thread(target=torch.set_num_threads, args=(1,), name="ecombot-one-thread")
    setter.start()
    setter.join()
