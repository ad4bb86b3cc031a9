"""What a training run reports, typed: returned by `train` and saved as run_config.json's "results"."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ecombot.run_dir import RunDir


@dataclass
class TrainResult:
    run: RunDir
    steps: int
    best_step: int
    best_val_loss: float | None  # None without a validation split
    final_train_loss: float | None
    train_seconds: float
    tokens_per_s: float
    stopped_early: bool
    split: dict[str, int]  # conversations in train / validation / test
    truncated: int  # conversations cut at max_length
    model_dir: str
    precision: str
    device: str
    packing: dict | None  # row_tokens, train_rows, padding_share; None for padded batches
    cpu_kernels: str  # "on", "off: <why>" or "not used"
    speedups: dict  # speedups.Applied.to_dict()

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run"}
