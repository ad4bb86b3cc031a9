"""The low-rank view of an adapter: which modules changed, how much, and how many ranks were used.

LoRA learns dW = s * B @ A (s = alpha / r, or alpha / sqrt(r) with rsLoRA). For each module we report
||dW||_F / ||W||_F and the singular values of dW; the effective rank is the number of singular values
holding 90% of the energy (sum of squares). The SVD is taken of the r x r core of B @ A (via two QR
factorisations), so it is exact and cheap even for the 262k x 640 embedding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ecombot import atomic
from ecombot.errors import ModelError
from ecombot.models import resolve_model
from ecombot.run_dir import RunDir

ENERGY = 0.90


@dataclass
class ModuleChange:
    name: str
    relative_norm: float  # ||dW||_F / ||W||_F
    singular_values: list[float]
    effective_rank: int


def effective_rank(singular_values: np.ndarray, energy: float = ENERGY) -> int:
    if singular_values.size == 0 or float((singular_values ** 2).sum()) == 0.0:
        return 0
    cumulative = np.cumsum(singular_values ** 2) / (singular_values ** 2).sum()
    return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


def low_rank_singular_values(b: torch.Tensor, a: torch.Tensor, scale: float) -> np.ndarray:
    """Singular values of scale * B @ A without forming it: B = Qb Rb, A^T = Qa Ra, so B A = Qb (Rb Ra^T) Qa^T."""
    _, rb = torch.linalg.qr(b.double())
    _, ra = torch.linalg.qr(a.double().T)
    return (scale * torch.linalg.svdvals(rb @ ra.T)).numpy()


def _base_tensor_reader(model_dir: Path):
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no safetensors weights to compare the adapter with")
    handles = [safe_open(str(f), framework="pt") for f in files]
    keys = {k: h for h in handles for k in h.keys()}

    def read(name: str) -> torch.Tensor | None:
        handle = keys.get(name)
        return handle.get_tensor(name) if handle is not None else None

    return read


def inspect_adapter(run_dir: str | Path, model: str | None = None) -> dict:
    run = RunDir(run_dir)
    run.check_adapter()
    run_dir = run.path
    config = json.loads((run_dir / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / (r ** 0.5) if config.get("use_rslora") else alpha / r
    weights = load_file(run_dir / "adapter_model.safetensors")
    read_base = _base_tensor_reader(resolve_model(model or run.base_model()))
    modules, trainable = [], sum(t.numel() for t in weights.values())
    in_model_order = lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)]  # noqa: E731
    for key in sorted((k for k in weights if k.endswith("lora_A.weight")), key=in_model_order):
        prefix = key[: -len("lora_A.weight")]
        a, b = weights[key].float(), weights[prefix + "lora_B.weight"].float()
        base_name = re.sub(r"^base_model\.model\.", "", prefix) + "weight"
        w = read_base(base_name)
        sv = low_rank_singular_values(b, a, scale)
        delta_norm = float(np.sqrt((sv ** 2).sum()))
        relative = delta_norm / float(w.float().norm()) if w is not None and float(w.float().norm()) > 0 else float("nan")
        modules.append(ModuleChange(prefix.rstrip(".").replace("base_model.model.", ""), relative,
                                    [float(x) for x in sv], effective_rank(sv)))
    if not modules:
        raise ModelError(f"{run_dir}: the adapter has no LoRA A/B matrices to inspect")
    base_params = None
    info = run.info()
    if info is not None:
        base_params = info.get("total_parameters", 0) - info.get("trainable_parameters", 0) or None
    return {
        "run": str(run_dir), "rank": r, "alpha": alpha, "scale": scale, "dora": bool(config.get("use_dora")),
        "trainable_parameters": trainable,
        "trainable_percent": 100.0 * trainable / base_params if base_params else None,
        "energy_threshold": ENERGY,
        "modules": [m.__dict__ for m in modules],
    }


def plot_anatomy(anatomy: dict, png_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = anatomy["modules"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    left.bar(range(len(modules)), [m["relative_norm"] for m in modules], color="tab:blue")
    left.set_title("||ΔW|| / ||W|| per adapted module")
    left.set_xlabel("module (in model order)")
    left.set_ylabel("relative change")
    spectra = np.array([m["singular_values"] for m in modules])
    spectra = spectra / np.maximum(spectra[:, :1], 1e-12)
    right.plot(spectra.T, color="tab:orange", alpha=0.25)
    right.plot(spectra.mean(axis=0), color="black", label="mean over modules")
    right.set_title(f"normalised singular values of ΔW (rank {anatomy['rank']})")
    right.set_xlabel("index")
    right.legend()
    fig.tight_layout()
    atomic.save_figure(fig, png_path)
    plt.close(fig)
    return png_path
