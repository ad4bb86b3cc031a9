"""Training configuration: one dataclass whose defaults and comments live in default.yaml (`ecombot config`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ecombot.errors import ConfigError

METHODS = ("lora", "qlora", "dora")
PRECISIONS = ("auto", "bf16", "fp32", "int8")
TASKS = ("support", "copy", "recommend")  # what an adapter learns; the catalog tasks build their data from a catalog
#                                          (train/tasks.py)
AUTO = "auto"
# Fields whose default is decided from the training split's size (fit_to_data); a number in the config or a flag wins.
SIZED_FIELDS = ("epochs", "learning_rate", "batch_size", "eval_steps")


@dataclass
class TrainConfig:
    model: str = "gemma-3-270m"
    data: str | None = None
    task: str = "support"
    catalog: str | None = None
    output: str | None = None
    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    system_prompt: str | None = None
    max_length: int = 1024
    method: str = "lora"
    rank: int = 16
    alpha: float = 32
    dropout: float = 0.0
    rslora: bool = False
    target_modules: str | list[str] = "all-linear"
    adapted_layers: int | str = "all"
    prompt_gradients: bool = True
    init_adapter: str | None = None
    parent_l2: float = 0.0
    emphasised: str | None = None
    emphasis: int = 1
    epochs: float | str = AUTO
    max_steps: int = -1
    batch_size: int | str = AUTO
    grad_accum: int = 1
    learning_rate: float | str = AUTO
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    group_by_length: bool = True
    packing: bool = True
    precision: str = "auto"
    logging_steps: int = 5
    eval_steps: int | str = AUTO
    early_stopping_patience: int = 3
    eval_max_examples: int | None = 100
    save_total_limit: int = 2
    knowledge: str = "default"
    db: str | None = None
    knowledge_k: int = 3
    handoff_share: float = 0.1
    ungrounded_share: float = 0.1
    rule_share: float = 0.0
    handoff_answer: str | None = None

    def __post_init__(self) -> None:
        # YAML 1.1 reads "2e-4" as a string; accept it as the number the user meant.
        for name in ("val_fraction", "test_fraction", "alpha", "dropout", "epochs", "learning_rate",
                     "weight_decay", "warmup_ratio", "handoff_share", "ungrounded_share", "rule_share",
                     "parent_l2"):
            value = getattr(self, name)
            if isinstance(value, str) and not (value == AUTO and name in SIZED_FIELDS):
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise ConfigError(f"config field '{name}': must be a number (got {value!r})") from None
        if isinstance(self.adapted_layers, str) and self.adapted_layers.strip().isdigit():  # from the command line
            self.adapted_layers = int(self.adapted_layers)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field '{name}': {why} (got {getattr(self, name)!r})")

        for name in ("rslora", "prompt_gradients", "group_by_length", "packing"):  # "false" in quotes is truthy
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false, unquoted")
        if self.method not in METHODS:
            raise bad("method", f"must be one of {', '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        for name in ("rank", "batch_size", "grad_accum", "max_length", "logging_steps", "eval_steps", "knowledge_k"):
            value = getattr(self, name)
            if (value != AUTO or name not in SIZED_FIELDS) and (not isinstance(value, int) or value < 1):
                raise bad(name, "must be a positive integer" + (" or auto" if name in SIZED_FIELDS else ""))
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise bad("val_fraction", "val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if self.learning_rate != AUTO and self.learning_rate <= 0:
            raise bad("learning_rate", "must be positive or auto")
        if self.epochs != AUTO and self.epochs <= 0 and self.max_steps <= 0:
            raise bad("epochs", "set epochs > 0, auto, or max_steps > 0")
        for name in ("handoff_share", "ungrounded_share", "rule_share"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        if not self.knowledge or not isinstance(self.knowledge, str):
            raise bad("knowledge", "name a knowledge base, or none")
        if self.adapted_layers != "all" and (isinstance(self.adapted_layers, bool)
                                             or not isinstance(self.adapted_layers, int) or self.adapted_layers < 1):
            raise bad("adapted_layers", "must be all or a positive number of top decoder layers")
        if self.parent_l2 < 0 or (self.parent_l2 and not self.init_adapter):
            raise bad("parent_l2", "must be >= 0, and above 0 only with init_adapter (the weights it pulls toward)")
        if isinstance(self.emphasis, bool) or not isinstance(self.emphasis, int) or self.emphasis < 1 or (
                self.emphasis > 1 and not self.emphasised):
            raise bad("emphasis", "must be a positive integer, and above 1 only with emphasised (the conversations "
                                  "it repeats)")
        if not self.prompt_gradients and not self.packing:
            raise bad("prompt_gradients", "false (--answer-only-backward) needs packing: true (drop --no-packing): "
                                          "answer-only backward runs on packed rows")
        tasks = [t.strip() for t in str(self.task).split(",")]
        if any(t not in TASKS for t in tasks) or len(set(tasks)) < len(tasks):
            raise bad("task", f"must be one of {', '.join(TASKS)}, or several of them comma-separated (one adapter "
                              "trained on each task's data)")
        self.task = ",".join(sorted(tasks, key=TASKS.index))  # support first: the run's main task (`tasks`)
        catalog_tasks = [t for t in tasks if t != "support"]
        if catalog_tasks and not self.catalog:
            need = "tasks need" if len(catalog_tasks) > 1 else "task needs"
            raise bad("catalog", f"the {' and '.join(catalog_tasks)} {need} a catalog file (or 'builtin')")
        if "support" not in tasks and self.db:
            raise bad("db", f"the {self.task} task uses no knowledge base, so no database; drop it")
        if "support" not in tasks and self.knowledge.lower() not in ("default", "none"):
            raise bad("knowledge", f"the {self.task} task trains without knowledge passages (its prompt holds the "
                                   f"{'product' if self.task == 'copy' else 'candidate products'} itself); drop it")
        if "support" in tasks and self.catalog and not self.grounded:
            raise bad("catalog", "a support run answers questions about the catalog's products from their passages "
                                 "in the knowledge base: drop --knowledge none, or the catalog")

    @property
    def run_dir(self) -> Path:
        return Path(self.output or f"runs/{self.method}")

    @property
    def tasks(self) -> list[str]:
        """What the adapter learns: one task, or several trained together into one multi-task adapter (the first,
        support where it is one, is the run's main task: its split is the run's data/, the others' data/TASK/)."""
        return self.task.split(",")

    @property
    def grounded(self) -> bool:
        return self.knowledge.lower() != "none"

    def resolved_system_prompt(self) -> str | None:
        """The prompt every training conversation starts with; None (the default) trains without one."""
        return self.system_prompt or None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def recorded(cls, config: dict[str, Any]) -> TrainConfig:
        """The config a run recorded (`run_config.json`), as it trained: a run recorded before ungrounded prompts
        existed had none, so its resumed steps and its `learn` versions go on without them (a version compared with
        its parent on the guard set differs from it by the feedback, not by the recipe)."""
        return cls(**{"ungrounded_share": 0.0, **config})


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

# The size rule (benchmarks/recipe_sizes.py measures it; README "Training recipe"). An adapter learns a store's
# answers in a number of optimizer steps more than in a number of passes: a 63-pair FAQ trained for the old fixed 2
# epochs got 16 steps and stayed near the base model, while ~100-150 steps at lr 1e-3 got most of the way. So small
# data gets passes until MIN_STEPS, large data is capped at MAX_STEPS (a 50,000-conversation log does not run for
# days), and validation every ~tenth of the run with early stopping keeps the best checkpoint whichever size it is.
MIN_STEPS = 150
MAX_STEPS = 1000
MAX_EPOCHS = 12
SMALL_DATA = 500  # below this many training conversations a batch holds 4 (twice the steps per pass)


@dataclass(frozen=True)
class SizedRecipe:
    auto_steps: int | None  # the optimizer steps the size rule chose (None: epochs or max_steps were given)
    reason: str


def fit_to_data(cfg: TrainConfig, n_train: int) -> tuple[TrainConfig, SizedRecipe]:
    """The config with every `auto` field decided from the number of training conversations, and why."""
    batch = cfg.batch_size if cfg.batch_size != AUTO else (4 if n_train < SMALL_DATA else 8)
    steps_per_epoch = max(1, math.ceil(n_train / (batch * cfg.grad_accum)))
    epochs = cfg.epochs if cfg.epochs != AUTO else min(MAX_EPOCHS, max(1, math.ceil(MIN_STEPS / steps_per_epoch)))
    max_steps = cfg.max_steps
    if cfg.epochs == AUTO and max_steps <= 0 and steps_per_epoch * epochs > MAX_STEPS:
        max_steps = MAX_STEPS
    total = max_steps if max_steps > 0 else math.ceil(steps_per_epoch * epochs)
    lr = cfg.learning_rate if cfg.learning_rate != AUTO else (1e-3 if n_train < 10_000 else 5e-4)
    eval_steps = cfg.eval_steps if cfg.eval_steps != AUTO else max(10, total // 10)
    why = []
    if cfg.max_steps > 0:
        why.append(f"max_steps {cfg.max_steps} set, {total * batch * cfg.grad_accum / n_train:.2f} passes")
    elif cfg.epochs == AUTO:
        why.append(f"{epochs:g} pass{'es' if epochs != 1 else ''} over the data: at least {MIN_STEPS} steps, at most "
                   f"{MAX_EPOCHS} passes"
                   if max_steps <= 0 or max_steps != MAX_STEPS
                   else f"capped at {MAX_STEPS} steps ({total * batch * cfg.grad_accum / n_train:.2f} passes)")
    if cfg.eval_steps == AUTO:
        why.append(f"validation every {eval_steps} steps, best checkpoint kept"
                   + (f", early stop after {cfg.early_stopping_patience} without improvement"
                      if cfg.early_stopping_patience else ""))
    recipe = SizedRecipe(total if cfg.epochs == AUTO and cfg.max_steps <= 0 else None,
                         f"{n_train} training conversations: {total} steps of {batch} conversations, lr {lr:g}"
                         + (f" ({'; '.join(why)})" if why else ""))
    resolved = dataclasses.replace(cfg, epochs=epochs, max_steps=max_steps, batch_size=batch, learning_rate=lr,
                                   eval_steps=eval_steps)
    return resolved, recipe


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
