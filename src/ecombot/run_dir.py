"""A training run's directory: the one place that knows its layout, reads it back and writes it safely.

    adapter_config.json, adapter_model.safetensors   best adapter by validation loss (plain PEFT format)
    run_config.json     resolved config, model directory, device, precision, speed-ups, results, status
    data_summary.json   what the data file held, what was dropped and why, token lengths
    data/               the train/validation/test split used (chat JSONL)
    train_log.jsonl     one line per logging/evaluation step
    loss_curve.png      training and validation loss
    README.md           model card (Hugging Face Hub format)
    checkpoints/        Trainer checkpoints for --resume

Only a directory with both adapter files is an adapter; a run of ecombot's is finished when run_config.json says
"complete". Training writes it (train/recipe.py); chat, serve, evaluate and `adapter inspect` read it through here.
A plain PEFT adapter directory (trained elsewhere) reads as a run without config: no system prompt, its base from
adapter_config.json.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ecombot.errors import ModelError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
COMPLETE_CHECKPOINT = "ecombot-complete"  # marker file: a checkpoint without it was interrupted mid-write


def write_json(path: Path, data: dict) -> None:
    """Write-then-rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- layout ---
    @property
    def config_file(self) -> Path:
        return self.path / "run_config.json"

    @property
    def log_file(self) -> Path:
        return self.path / "train_log.jsonl"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def name(self) -> str:
        return self.path.resolve().name

    # --- reading ---
    def info(self) -> dict | None:
        """run_config.json, or None for an adapter trained outside ecombot (or a run that never started)."""
        return json.loads(self.config_file.read_text(encoding="utf-8")) if self.config_file.is_file() else None

    def status(self) -> str | None:
        """"running" or "complete" for ecombot's runs, None without run_config.json."""
        info = self.info()
        return info.get("status") if info else None

    def has_adapter(self) -> bool:
        return all((self.path / name).is_file() for name in ADAPTER_FILES)

    def check_adapter(self) -> None:
        """Raise a clear error unless this directory holds an adapter to load."""
        missing = [name for name in ADAPTER_FILES if not (self.path / name).is_file()]
        if not self.path.is_dir() or missing:
            raise ModelError(f"{self.path}: not a trained ecombot run or PEFT adapter (missing "
                             f"{', '.join(missing) or 'dir'}); an unfinished run keeps its checkpoints in "
                             "checkpoints/ (continue it with --resume)")

    def base_model(self) -> str:
        """The model spec the adapter was trained on: the run config's `model`, else the adapter's base path."""
        info = self.info()
        if info is not None:
            return info["config"]["model"]
        return json.loads((self.path / "adapter_config.json").read_text())["base_model_name_or_path"]

    def system_prompt(self) -> str | None:
        """The system prompt the run was trained with (None: none, or an adapter trained outside ecombot)."""
        info = self.info()
        return (info.get("system_prompt") or None) if info else None

    def train_split(self) -> Path | None:
        """The training conversations the run used (chat JSONL), if it kept them."""
        path = self.data_dir / "train.jsonl"
        return path if path.is_file() else None

    def train_log(self) -> list[dict]:
        """The training log, one record per logging/evaluation step. JSON Lines end at LF only: str.splitlines
        would also cut at U+2028/U+0085, which are legal inside a logged string."""
        if not self.log_file.is_file():
            return []
        return [json.loads(line) for line in self.log_file.read_text(encoding="utf-8").split("\n") if line.strip()]

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that was fully written (interrupted ones are ignored)."""
        done = [p for p in self.checkpoints_dir.glob("checkpoint-*") if (p / COMPLETE_CHECKPOINT).is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None

    # --- writing ---
    def write_json(self, name: str, data: dict) -> None:
        write_json(self.path / name, data)

    def write_info(self, info: dict) -> None:
        self.write_json(self.config_file.name, info)

    def save_adapter(self, model) -> None:
        """Save into a temporary folder, then move each file into the run directory."""
        with tempfile.TemporaryDirectory(dir=self.path, prefix=".adapter-") as tmp:
            model.save_pretrained(tmp)
            for file in Path(tmp).iterdir():
                os.replace(file, self.path / file.name)

    def plot_loss_curve(self, png_path: Path | None = None) -> Path:
        """Training and validation loss by step, as a PNG (default: loss_curve.png in the run)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        png_path = png_path or self.path / "loss_curve.png"
        records = self.train_log()
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        for points, label, style in ((train, "training loss", "-"), (val, "validation loss", "o-")):
            if points:
                ax.plot(*zip(*points), style, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy per answer token")
        ax.set_title("ecombot fine-tuning")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(png_path)
        plt.close(fig)
        return png_path
