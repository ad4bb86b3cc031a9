"""What this CPU can do fast: which speed-ups pay here, and in which precision models train (models/device.py)."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run at full speed (measured ~2.5x fp32 for LoRA steps here)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


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
