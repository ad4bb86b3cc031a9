"""The training recipe, top to bottom: data -> tokens -> base model -> adapter -> Trainer -> run directory.

Run directory layout (only `adapter_*` + `run_config.json` with status "complete" make a finished run):
    adapter_config.json, adapter_model.safetensors   best adapter by validation loss (plain PEFT format)
    run_config.json     resolved config, model directory, device, precision, results, status
    data_summary.json   what the data file held, what was dropped and why, token lengths
    data/               the train/validation/test split used (chat JSONL)
    train_log.jsonl     one line per logging/evaluation step
    loss_curve.png      training and validation loss
    README.md           model card (Hugging Face Hub format)
    checkpoints/        Trainer checkpoints for --resume
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ecombot import __version__
from ecombot.config import TrainConfig
from ecombot.data import prepare, write_split
from ecombot.errors import EcombotError
from ecombot.models import load_base_model, load_tokenizer, pick_device, resolve_model, resolve_precision
from ecombot.train import kernels
from ecombot.train.data import PackedCollator, PadCollator, encode_conversations, pack_budget, packed_rows
from ecombot.train.fused_lora import use_fused_lora
from ecombot.train.mlp import use_fused_mlp
from ecombot.train.norm import use_lean_norms
from ecombot.train.report import model_card, plot_loss_curve, read_log
from ecombot.train.trainer import EvaluateAtEnd, RunLogger, SupervisedTrainer, latest_complete_checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    results: dict


def write_json(path: Path, data: dict) -> None:
    """Write-then-rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_main_process() -> bool:
    """False in the extra processes of `torchrun` / `accelerate launch` (they train but write no run files)."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> tuple[TrainConfig, Path | None]:
    """On --resume, the run's saved config wins (same data, same seed) and the newest complete checkpoint is used."""
    run = cfg.run_dir
    saved = run / "run_config.json"
    if resume:
        if not saved.is_file():
            raise EcombotError(f"{run}: nothing to resume (no run_config.json); start a run with this --output first")
        config = TrainConfig(**json.loads(saved.read_text())["config"])
        return config, latest_complete_checkpoint(run / "checkpoints")
    if not is_main_process():
        return cfg, None
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise EcombotError(f"{run}: run directory already exists; use --resume to continue it, --overwrite to "
                               "replace it, or --output for a new one")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return cfg, None


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      use_rslora=cfg.rslora, use_dora=cfg.method == "dora", target_modules=cfg.target_modules,
                      bias="none")


def build_model(cfg: TrainConfig, model_dir: Path, device: str, precision: str):
    from peft import get_peft_model
    from transformers import set_seed

    quantized = cfg.method == "qlora"
    # The frozen base is stored in bf16 when computing in bf16: autocast would otherwise re-cast every fp32
    # weight (the 262k x 640 embedding/head included) on every step. The adapter weights stay fp32.
    # For QLoRA the same holds for what is not quantized (embedding, norms); PEFT's
    # prepare_model_for_kbit_training is not used because it upcasts all of that to fp32, which put QLoRA's
    # peak memory above LoRA's on Gemma 3 270M (its embedding is 60% of the weights).
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = load_base_model(model_dir, dtype=dtype, quantize_4bit=quantized, device=device)
    model.config.use_cache = False
    set_seed(cfg.seed)  # identical adapter initialisation for identical seeds
    model = get_peft_model(model, lora_config(cfg))
    if dtype == torch.bfloat16:
        keep_activations_in_bf16(model)
    use_fused_lora(model)
    use_lean_norms(model)
    use_fused_mlp(model)
    return model


def keep_activations_in_bf16(model) -> None:
    """Stop PEFT from copying every LoRA input to fp32 (the adapter weights' dtype) on each call.

    Under bf16 autocast the adapter's matmuls run in bf16 anyway, so the copy to fp32 (and autocast's copy
    back) only moves memory: measured 263 -> 328 tokens/s for LoRA steps on Gemma 3 270M, same losses to
    4 decimals (benchmarks/train_throughput.py; test in tests/test_train.py).
    """
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False


def training_arguments(cfg: TrainConfig, run: Path, device: str, precision: str, has_validation: bool):
    from transformers import TrainingArguments

    per_batch = 1 if cfg.packing else cfg.batch_size  # with packing, a batch is one packed row
    return TrainingArguments(
        output_dir=str(run / "checkpoints"),
        per_device_train_batch_size=per_batch,
        per_device_eval_batch_size=per_batch * 2,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a share of the total steps
        lr_scheduler_type="cosine",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=has_validation,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=precision == "bf16",
        use_cpu=device == "cpu",
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        remove_unused_columns=False,
        prediction_loss_only=True,
        report_to="none",
        disable_tqdm=False,
    )


def save_adapter_atomically(model, run: Path) -> None:
    """Save into a temporary folder, then move each file into the run directory."""
    with tempfile.TemporaryDirectory(dir=run, prefix=".adapter-") as tmp:
        model.save_pretrained(tmp)
        for file in Path(tmp).iterdir():
            os.replace(file, run / file.name)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> TrainResult:
    from transformers import EarlyStoppingCallback

    cfg, checkpoint = prepare_run_dir(cfg, resume, overwrite)
    run = cfg.run_dir
    main = is_main_process()

    # 1. Data: read, validate, split (the same seed gives the same split in every command).
    prepared = prepare(cfg.data, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    split, summary = prepared.split, prepared.report
    if main:
        write_split(split, run / "data", extra={"seed": cfg.seed, "source": summary.path})

    # 2. Tokens: chat template applied, loss mask on assistant turns, truncation counted.
    model_dir = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    system_prompt = cfg.resolved_system_prompt()
    train_set = encode_conversations(split.train, tokenizer, system_prompt, cfg.max_length)
    val_convs = split.validation[: cfg.eval_max_examples] if cfg.eval_max_examples else split.validation
    val_set = encode_conversations(val_convs, tokenizer, system_prompt, cfg.max_length)
    summary.add_token_lengths(train_set.lengths + val_set.lengths, cfg.max_length)
    if not train_set.examples:
        raise EcombotError(f"{summary.path}: no training conversation has an answer within max_length={cfg.max_length}")
    if main:
        write_json(run / "data_summary.json", {**summary.to_dict(), "answer_cut_off_by_max_length": train_set.no_answer_left,
                                               "split": split.counts()})

    # 3. Batches: packed rows of one fixed size (see data.PackedCollator), or padded batches.
    if cfg.packing:
        budget = pack_budget([len(e["input_ids"]) for e in train_set.examples + val_set.examples], cfg.batch_size)
        train_items, val_items = packed_rows(train_set.examples, budget), packed_rows(val_set.examples, budget)
        collator = PackedCollator(tokenizer.pad_token_id, budget)
        packing = {"row_tokens": budget, "train_rows": len(train_items),
                   "padding_share": round(1 - sum(len(e["input_ids"]) for e in train_set.examples)
                                          / (budget * len(train_items)), 4)}
    else:
        train_items, val_items = train_set.examples, val_set.examples
        collator, packing = PadCollator(tokenizer.pad_token_id), None

    # 4. Model: base (4-bit for QLoRA) + fresh adapter.
    device = pick_device()
    precision = resolve_precision(cfg.precision, device)
    model = build_model(cfg, model_dir, device, precision)
    trainable, total = model.get_nb_trainable_parameters()
    run_info = {"config": cfg.to_dict(), "model_dir": str(model_dir), "device": device, "precision": precision,
                "system_prompt": system_prompt, "ecombot_version": __version__, "status": "running",
                "trainable_parameters": trainable, "total_parameters": total}
    if main:
        write_json(run / "run_config.json", run_info)

    # 5. Train with Transformers' Trainer (early stopping on validation loss, best checkpoint kept).
    has_validation = bool(val_set.examples)
    logger = RunLogger(run / "train_log.jsonl", show_progress=show_progress)
    callbacks = [EvaluateAtEnd()]
    if has_validation and cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = SupervisedTrainer(
        model=model, args=training_arguments(cfg, run, device, precision, has_validation),
        train_dataset=train_items, eval_dataset=val_items or None,
        data_collator=collator, callbacks=callbacks, run_logger=logger)
    started = time.time()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.time() - started

    # 6. Outputs: adapter (best by validation loss), curve, card, final status.
    if main:
        save_adapter_atomically(trainer.model, run)
    log = read_log(run / "train_log.jsonl")
    train_losses = [r["loss"] for r in log if "loss" in r]
    best_step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1]) if trainer.state.best_model_checkpoint else trainer.state.global_step
    results = {
        "steps": trainer.state.global_step, "best_step": best_step,
        "best_val_loss": trainer.state.best_metric, "final_train_loss": train_losses[-1] if train_losses else None,
        "train_seconds": round(train_seconds, 1), "tokens_per_s": round(logger.tokens_per_second(), 1),
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "split": split.counts(), "truncated": train_set.truncated + val_set.truncated,
        "model_dir": str(model_dir), "precision": precision, "device": device, "packing": packing,
        "cpu_kernels": kernels.status() if device == "cpu" and precision == "bf16" else "not used",
    }
    if main:
        plot_loss_curve(run / "train_log.jsonl", run / "loss_curve.png")
        (run / "README.md").write_text(model_card(cfg.to_dict(), summary.to_dict(), results), encoding="utf-8")
        write_json(run / "run_config.json", {**run_info, "status": "complete", "results": results})
    return TrainResult(run, results)
