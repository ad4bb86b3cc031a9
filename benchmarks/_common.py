"""Shared by the benchmark scripts: peak memory, summary statistics, a plain-text table, subprocess workers."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}


def fmt(stats: dict, digits: int = 1) -> str:
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}-{stats['max']:.{digits}f}]"


def machine() -> dict:
    import torch

    info = {"cpu": _cpu_name(), "cpu_class": _cpu_class(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_class() -> str:
    """The best matrix/vector extension: speed differs ~4x between AMX/AVX-512 BF16 (bf16 training) and AVX2 (fp32)."""
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return next((name for name in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if name in flags), "no avx2")


def peak_gpu_mb() -> float | None:
    """Peak GPU memory PyTorch allocated in this process (None without CUDA)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class WorkerFailed(SystemExit):
    """A worker process failed; a SystemExit so that a script which does not catch it exits with the message."""


def run_worker(script: str, args: list[str], timeout: float = 3600) -> dict:
    """Run `script --worker ...` in a fresh process (clean peak-memory figures) and return its JSON result."""
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise WorkerFailed(f"worker {args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def write_results(path: str, data: dict) -> None:
    """The benchmark's JSON results (folders created as needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
