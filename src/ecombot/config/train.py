"""Training configuration: one dataclass whose defaults and comments live in default.yaml (`ecombot config`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ecombot.errors import ConfigError

METHODS = ("lora", "qlora", "dora")
PRECISIONS = ("auto", "bf16", "fp32")
@dataclass
class TrainConfig:
    model: str = "gemma-3-270m"
    data: str | None = None
    output: str | None = None
    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    system_prompt: str | None = None
    max_length: int = 512
    method: str = "lora"
    rank: int = 16
    alpha: float = 32
    dropout: float = 0.0
    rslora: bool = False
    target_modules: str | list[str] = "all-linear"
    epochs: float = 2
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    group_by_length: bool = True
    packing: bool = True
    precision: str = "auto"
    logging_steps: int = 5
    eval_steps: int = 50
    early_stopping_patience: int = 3
    eval_max_examples: int | None = 200
    save_total_limit: int = 2

    def __post_init__(self) -> None:
        # YAML 1.1 reads "2e-4" as a string; accept it as the number the user meant.
        for name in ("val_fraction", "test_fraction", "alpha", "dropout", "epochs", "learning_rate",
                     "weight_decay", "warmup_ratio"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise ConfigError(f"config field '{name}': must be a number (got {value!r})") from None
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field '{name}': {why} (got {getattr(self, name)!r})")

        if self.method not in METHODS:
            raise bad("method", f"must be one of {', '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        for name in ("rank", "batch_size", "grad_accum", "max_length", "logging_steps", "eval_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise bad("val_fraction", "val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if self.learning_rate <= 0:
            raise bad("learning_rate", "must be positive")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise bad("epochs", "set epochs > 0 or max_steps > 0")

    @property
    def run_dir(self) -> Path:
        return Path(self.output or f"runs/{self.method}")

    def resolved_system_prompt(self) -> str | None:
        """The prompt every training conversation starts with; None (the default) trains without one."""
        return self.system_prompt or None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def default_yaml_text() -> str:
    return resources.files("ecombot.config").joinpath("default.yaml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file, then non-None overrides (the CLI flags). Unknown keys are errors."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
        unknown = sorted(set(loaded) - FIELDS)
        if unknown:
            raise ConfigError(f"{path}: unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
