"""A training run's directory: the one place that knows its layout, reads it back and writes it safely.

    adapter_config.json, adapter_model.safetensors   best adapter by validation loss (plain PEFT format)
    run_config.json     resolved config, model directory, device, precision, speed-ups, results, status
    data_summary.json   what the data file held, what was dropped and why, token lengths
    data/               the train/validation/test split used (chat JSONL)
    train_log.jsonl     one line per logging/evaluation step
    loss_curve.png      training and validation loss
    README.md           model card (Hugging Face Hub format)
    checkpoints/        Trainer checkpoints for --resume
    versions.json       after `ecombot learn`: every version (v1 is this run itself), its parent, its measurements,
                        the promotion decision, the feedback it used or held out, and which version is live
    versions/v2, v3 …   the later versions, each a complete run directory of its own, trained from its parent
    versions.png        each version's guard-set and feedback-slice loss beside its parent's
    item_scores.json    after `ecombot learn` scored this version: its answer-token stats per conversation (a cache)

Only a directory with both adapter files is an adapter; a run of ecombot's is finished when run_config.json says
"complete", and its adapter is loaded only then (while it says "running" the files may be an older adapter's, or
half replaced). Training writes it (train/recipe.py); chat, serve, evaluate and `adapter inspect` read it through
here. A plain PEFT adapter directory (trained elsewhere) reads as a run without config: no system prompt, its base
from adapter_config.json.

Every file is written beside its name and renamed into place (atomic.py), except the log (appended line by line: a
torn last line is skipped) and checkpoints (each counts only once marked complete).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ecombot import atomic
from ecombot.errors import EcombotError, ModelError

FIRST_VERSION = "v1"  # the run itself, as `ecombot train` wrote it
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
COMPLETE_CHECKPOINT = "ecombot-complete"  # marker file: a checkpoint without it was interrupted mid-write
TRAINING_SUMMARY = "train_runtime"  # in the record Transformers logs once training ends (again when a run resumes)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


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

    @property
    def item_scores_file(self) -> Path:
        return self.path / "item_scores.json"

    @property
    def versions_file(self) -> Path:
        return self.path / "versions.json"

    def version_dir(self, version: str) -> Path:
        return self.path if version == FIRST_VERSION else self.path / "versions" / version

    # --- versions (ecombot learn) ---
    def lineage(self) -> dict:
        """versions.json: {"live": "v2", "versions": [{"name", "parent", "status", ...}, ...]}; a run never
        learnt from is its own only version, live."""
        if not self.versions_file.is_file():
            return {"live": FIRST_VERSION, "versions": [{"name": FIRST_VERSION, "parent": None, "status": "live"}]}
        try:
            return json.loads(self.versions_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EcombotError(f"{self.versions_file}: damaged, not JSON ({exc})") from None

    def live_version(self) -> str:
        return self.lineage()["live"]

    def version(self, name: str) -> "RunDir":
        return RunDir(self.version_dir(name))

    def existing_version(self, name: str) -> "RunDir":
        """`version(name)`, refused with the list of versions when the lineage has none of that name."""
        names = [v["name"] for v in self.lineage()["versions"]]
        if name not in names:
            raise EcombotError(f"{self.path}: no version {name!r} (versions: {', '.join(names)})")
        return self.version(name)

    def live(self) -> "RunDir":
        """The run directory of the version that answers: this one until `ecombot learn` promotes another."""
        return self.version(self.live_version())

    def write_lineage(self, lineage: dict) -> None:
        """One atomic rename: a reader (a serving process) sees the old live version or the new one, never half."""
        self.write_json(self.versions_file.name, lineage)

    # --- reading ---
    def info(self) -> dict | None:
        """run_config.json, or None for an adapter trained outside ecombot (or a run that never started)."""
        if not self.config_file.is_file():
            return None
        try:
            return json.loads(self.config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EcombotError(f"{self.config_file}: damaged, not JSON ({exc})") from None

    def status(self) -> str | None:
        """"running" or "complete" for ecombot's runs, None without run_config.json."""
        info = self.info()
        return info.get("status") if info else None

    def has_adapter(self) -> bool:
        return all((self.path / name).is_file() for name in ADAPTER_FILES)

    def check_adapter(self) -> None:
        """Raise a clear error unless this directory holds an adapter to load."""
        status = self.status()
        if status not in (None, "complete"):
            raise ModelError(f"{self.path}: this training run has not finished (run_config.json says {status!r}), so "
                             "its adapter files may be an older adapter's or half written; continue it with "
                             f"`ecombot train --output {self.path} --resume`")
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

    def method(self) -> str:
        """The fine-tuning method of the run's config (lora, qlora, dora); "lora" for an adapter trained elsewhere."""
        info = self.info()
        return (info.get("config") or {}).get("method", "lora") if info else "lora"

    def system_prompt(self) -> str | None:
        """The system prompt the run was trained with (None: none, or an adapter trained outside ecombot)."""
        info = self.info()
        return (info.get("system_prompt") or None) if info else None

    def knowledge(self) -> dict | None:
        """How the run was grounded: {"name", "db", "k", "handoff", "content_hash", "passages", "handoff_share",
        "ungrounded_share", "fact_edit_share", ...};
        None when it trained without a knowledge base (then chat, serve and evaluate answer from the weights)."""
        info = self.info()
        return (info.get("knowledge") or None) if info else None

    def longest_answer(self) -> int | None:
        """Tokens of the longest answer this run (or version) trained on; None for a run recorded before lengths were
        kept, or one trained outside ecombot."""
        summary = self.path / "data_summary.json"
        if not summary.is_file():
            return None
        try:
            return json.loads(summary.read_text(encoding="utf-8")).get("answer_tokens", {}).get("max")
        except json.JSONDecodeError as exc:
            raise EcombotError(f"{summary}: damaged, not JSON ({exc})") from None

    def changed_split_files(self, files: dict[str, str], directory: Path | None = None) -> list[str]:
        """Which of the split files given (name -> text) hold other conversations than the ones the run kept in
        `directory` (default data/; the order aside)."""
        directory = directory or self.data_dir
        return [name for name, text in files.items() if not (directory / name).is_file()
                or not same_conversations((directory / name).read_text(encoding="utf-8"), text)]

    def task(self) -> tuple[str, str | None]:
        """The run's task (support, copy or recommend; several comma-separated for a multi-task adapter) and the
        catalog it trained on (a catalog task's, or a support run's product questions), if any."""
        config = (self.info() or {}).get("config", {})
        return config.get("task") or "support", config.get("catalog")

    def tasks(self) -> list[str]:
        """The tasks the adapter learnt, its main one first (config/train.py TrainConfig.tasks)."""
        return self.task()[0].split(",")

    def split_dir(self, task: str) -> Path:
        """Where the run keeps `task`'s split: data/ for its main task, data/TASK/ for the other tasks of a multi-task
        run (each task split on its own, as a run of that task alone splits it)."""
        return self.data_dir if task == self.tasks()[0] else self.other_task_dir(task)

    def other_task_dir(self, task: str) -> Path:
        """The split of a multi-task run's task other than its main one."""
        return self.data_dir / task

    def task_data_file(self, task: str) -> Path:
        """A catalog task's conversations, built from the catalog before the split (train/tasks.py)."""
        return self.path / "task_data" / f"{task}.jsonl"

    def train_split(self) -> Path | None:
        """The training conversations the run used (chat JSONL), if it kept them."""
        path = self.data_dir / "train.jsonl"
        return path if path.is_file() else None

    def train_log(self) -> list[dict]:
        """The training log, one record per logging/evaluation step; a last line cut short by a kill is skipped.
        JSON Lines end at LF only: str.splitlines would also cut at U+2028/U+0085, legal inside a logged string."""
        if not self.log_file.is_file():
            return []
        text = self.log_file.read_text(encoding="utf-8")
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines) and not text.endswith("\n"):
                    break
                raise EcombotError(f"{self.log_file}:{number}: damaged line, not JSON") from None
        return records

    def complete_checkpoints(self) -> list[Path]:
        """The checkpoints that were fully written, oldest first (interrupted ones are ignored)."""
        done = [p for p in self.checkpoints_dir.glob("checkpoint-*") if (p / COMPLETE_CHECKPOINT).is_file()]
        return sorted(done, key=checkpoint_step)

    def latest_checkpoint(self) -> Path | None:
        done = self.complete_checkpoints()
        return done[-1] if done else None

    # --- writing ---
    def write_json(self, name: str, data: dict) -> None:
        atomic.write_json(self.path / name, data)

    def write_text(self, name: str, text: str) -> None:
        atomic.write_text(self.path / name, text)

    def write_info(self, info: dict) -> None:
        self.write_json(self.config_file.name, info)

    def save_adapter(self, model) -> None:
        """Save into a temporary folder, then move each file into the run directory.

        Two files cannot be replaced in one step, so a run that says "complete" is first marked "running": readers
        (check_adapter) never pair one adapter's config with another's weights. The caller marks it complete after.
        """
        info = self.info()
        if info and info.get("status") == "complete":
            self.write_info({**info, "status": "running"})
        with tempfile.TemporaryDirectory(dir=self.path, prefix=".adapter-") as tmp:
            model.save_pretrained(tmp)
            for file in Path(tmp).iterdir():
                atomic.move_into_place(file, self.path / file.name)

    def remove(self) -> None:
        """Delete the run, its adapter first: a deletion cut short must not leave an adapter that loads without the
        run's config (as a plain PEFT adapter: no system prompt, no status)."""
        for name in ADAPTER_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path)

    def mark_checkpoint_complete(self, checkpoint: Path) -> None:
        """Mark a checkpoint resumable once it, and the log up to it, is on disk."""
        atomic.fsync_tree(checkpoint)
        if self.log_file.is_file():
            atomic.fsync_tree(self.log_file)
        atomic.write_text(checkpoint / COMPLETE_CHECKPOINT, "ok\n")

    def prune_checkpoints(self, keep: int | None, best: str | None) -> None:
        """Keep at most `keep` complete checkpoints, the newest and the best always among them (Transformers'
        save_total_limit); drop interrupted ones. Called only after the newest is marked complete, so a kill at
        any moment leaves a checkpoint to resume from."""
        done = self.complete_checkpoints()
        for checkpoint in self.checkpoints_dir.glob("checkpoint-*"):
            if checkpoint not in done:
                shutil.rmtree(checkpoint, ignore_errors=True)
        if not keep or keep <= 0 or not done:
            return
        protected = {done[-1].name} | ({Path(best).name} if best else set())
        excess = len(done) - max(keep, len(protected))
        for checkpoint in [p for p in done if p.name not in protected][:max(excess, 0)]:
            shutil.rmtree(checkpoint, ignore_errors=True)

    def drop_log_after(self, step: int) -> None:
        """Cut the log back to what was logged up to `step` (the checkpoint a run resumes from): the resumed run
        logs the later steps, and its end-of-training summary, again."""
        kept = [r for r in self.train_log() if r["step"] < step or (r["step"] == step and TRAINING_SUMMARY not in r)]
        self.write_text(self.log_file.name, "".join(json.dumps(r) + "\n" for r in kept))

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
        atomic.save_figure(fig, png_path)
        plt.close(fig)
        return png_path


def same_conversations(text: str | None, other: str | None) -> bool:
    """Two split files' texts (chat JSONL; None: no file) hold the same conversations, in any order: runs made before
    the split's order changed (stop 41) compare equal to the same split made now."""
    if text is None or other is None:
        return text is other
    return sorted(text.splitlines()) == sorted(other.splitlines())
