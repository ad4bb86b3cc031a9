"""Transformers' Trainer with three changes that matter for support bots on small machines:
supervised-positions-only loss (models/loss.py), checkpoints that are marked complete only once fully
written (and older ones pruned only after that), and a progress bar + JSONL log that show loss, tokens/s and ETA."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ecombot.models.loss import batch_tokens, supervised_loss
from ecombot.run_dir import RunDir

class RunLogger(TrainerCallback):
    """Progress bar (loss, tokens/s, ETA) and a JSONL training log, one line per logging step."""

    def __init__(self, log_path: Path, show_progress: bool = True):
        self.log_path = log_path
        self.show_progress = show_progress
        self.tokens = 0
        self.bar = None
        self.started = time.time()
        self.last_loss: float | None = None

    def tokens_per_second(self) -> float:
        return self.tokens / max(time.time() - self.started, 1e-9)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self.tokens = 0
        if self.show_progress and state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            postfix = {"tok/s": f"{self.tokens_per_second():.0f}"}
            if self.last_loss is not None:
                postfix["loss"] = f"{self.last_loss:.3f}"
            self.bar.set_postfix(postfix, refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        if "eval_loss" in logs and self.bar is not None:
            self.bar.write(f"step {state.global_step}: validation loss {logs['eval_loss']:.4f}")
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                  "elapsed_s": round(time.time() - self.started, 2),
                  "tokens_per_s": round(self.tokens_per_second(), 1), **logs}
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and checkpoint the last step too, so the best-checkpoint choice sees the final weights.

    Without validation the last step is not checkpointed: the run saves its adapter right after, and Transformers'
    final checkpoint (optimizer state included, nothing left to resume) took 0.14 s of a 9 s run."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < state.max_steps:
            return
        has_validation = args.eval_strategy != "no"
        control.should_evaluate = has_validation
        control.should_save = has_validation


class SupervisedTrainer(Trainer):
    # compute_loss normalises by the number of supervised tokens in the whole accumulated batch.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, run_logger: RunLogger, run: RunDir, keep_checkpoints: int | None,
                 answer_only_backward: bool = False, parent_l2: float = 0.0, **kwargs):
        """`keep_checkpoints` replaces TrainingArguments.save_total_limit (leave that unset): Transformers prunes
        older checkpoints before this class can mark the new one complete. `answer_only_backward`: see
        models/loss.py answer_only_losses. `parent_l2`: TrainConfig.parent_l2, pulling toward the weights the model
        has now (the adapter it continues)."""
        super().__init__(*args, **kwargs)
        self.parent_l2 = parent_l2
        # (weight, its starting value) by object, taken before Accelerate wraps the model (DDP keeps the objects)
        self.parent_weights = [(p, p.detach().clone()) for p in self.model.parameters()
                               if p.requires_grad] if parent_l2 else []
        self.answer_only_backward = answer_only_backward
        self.run_logger = run_logger
        self.run = run
        self.keep_checkpoints = keep_checkpoints
        self.non_embedding_parameters: int | None = None
        self.add_callback(run_logger)
        self.remove_callback(ProgressCallback)
        self.remove_callback(PrinterCallback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.run_logger.tokens += batch_tokens(inputs)
        loss = supervised_loss(model, inputs, num_items_in_batch if model.training else None,
                               self.answer_only_backward)
        if model.training and self.parent_weights:
            # a share on each micro-batch and process, so that an optimizer step adds parent_l2 x drift once beside
            # the supervised loss (which is divided by every process's answer tokens; DDP averages the gradients)
            drift = sum((p - start).pow(2).sum() for p, start in self.parent_weights)
            shares = self.current_gradient_accumulation_steps * self.accelerator.num_processes
            loss = loss + self.parent_l2 * drift / shares
        return (loss, None) if return_outputs else loss

    def floating_point_ops(self, inputs) -> int:
        """Transformers' estimate for its `total_flos` log (6 x tokens x non-embedding parameters), with the
        parameters counted once: Transformers recounts them on every step (11 ms per step for Gemma 3 270M)."""
        if self.non_embedding_parameters is None:
            self.non_embedding_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs["input_ids"].numel() * self.non_embedding_parameters

    def train(self, *args, **kwargs):
        """Trainer.train with the objects that exist before it (model, tokenizer, data: ~600k for Gemma 3 270M)
        left out of Python's garbage collection until it returns: the full collection Accelerate runs at the start
        of training took 0.22 s scanning them (2.6% of a 64-conversation epoch), 5 ms without them."""
        gc.freeze()
        try:
            return super().train(*args, **kwargs)
        finally:
            gc.unfreeze()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Validation needs only the loss (per-token mean over this batch's answer tokens)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process has written its RNG state into the checkpoint
        if self.args.should_save:
            self.run.mark_checkpoint_complete(self.run.checkpoints_dir / f"checkpoint-{self.state.global_step}")
            self.run.prune_checkpoints(self.keep_checkpoints, self.state.best_model_checkpoint)
