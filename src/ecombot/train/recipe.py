"""The training recipe, top to bottom: data -> tokens -> base model -> adapter -> Trainer -> run directory
(its layout: run_dir.py)."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import torch

from ecombot import __version__
from ecombot.config import TrainConfig, fit_to_data
from ecombot.config.train import MAX_EPOCHS
from ecombot.data import Conversation, normalise_text, prepare, read_file, split_files, write_split
from ecombot.errors import ConfigError, EcombotError
from ecombot.knowledge import recorded_pairs
from ecombot import speedups
from ecombot.models import (PackedCollator, PadCollator, answer_token_counts, encode_conversations, load_base_model,
                            load_tokenizer, pick_device, resolve_model, resolve_precision)
from ecombot.run_dir import RunDir, checkpoint_step
from ecombot.train.card import model_card
from ecombot.train.grounding import ground_training_data
from ecombot.train.packing import pack_budget, packed_rows
from ecombot.train.result import TrainResult
from ecombot.train.tasks import catalog_documents, product_question_maker, task_data
from ecombot.train.trainer import EvaluateAtEnd, RunLogger, SupervisedTrainer


def is_main_process() -> bool:
    """False in the extra processes of `torchrun` / `accelerate launch` (they train but write no run files)."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> tuple[TrainConfig, RunDir, Path | None]:
    """On --resume, the run's saved config wins (same data, same seed) and the newest complete checkpoint is used;
    with none to continue from, it stops rather than train again from step 0 under the old log."""
    run = RunDir(cfg.run_dir)
    if resume:
        info = run.info()
        if info is None:
            raise EcombotError(f"{run.path}: nothing to resume (no run_config.json); start a run with this --output "
                               "first")
        if info.get("status") == "complete":
            raise EcombotError(f"{run.path}: this run is already complete, nothing to resume; use --overwrite to "
                               "train it again, or --output for a new run")
        checkpoint = run.latest_checkpoint()
        if checkpoint is None:
            raise EcombotError(f"{run.path}: no complete checkpoint to resume from (the run stopped before its first "
                               f"one, at step {info['config']['eval_steps']}); start it again with --overwrite")
        if is_main_process():
            run.drop_log_after(checkpoint_step(checkpoint))
        return TrainConfig.recorded(info["config"]), run, checkpoint
    if not is_main_process():
        return cfg, run, None
    if run.path.exists() and any(run.path.iterdir()):
        if not overwrite:
            raise EcombotError(f"{run.path}: run directory already exists; use --resume to continue it, --overwrite "
                               "to replace it, or --output for a new one")
        run.remove()
    run.path.mkdir(parents=True, exist_ok=True)
    return cfg, run, None


def precision_line(device: str, precision: str, asked: str) -> str:
    """Said before training: on a CPU without native bf16, a user sees why it runs slower than bf16 figures."""
    line = f"training on {device} in {precision}"
    if precision == "int8":
        line += " (fp32 weights, the frozen layers' input gradients in int8)"
    if device == "cpu" and precision != "bf16" and asked == "auto":
        line += ": this CPU has no native bf16 (AVX-512 BF16 or AMX), which trains several times faster"
    return line


def lora_config(cfg: TrainConfig, model):
    from peft import LoraConfig

    num_layers = model.config.get_text_config().num_hidden_layers
    if cfg.adapted_layers != "all" and cfg.adapted_layers > num_layers:
        raise ConfigError(f"config field 'adapted_layers': the model has {num_layers} decoder layers "
                          f"(got {cfg.adapted_layers})")
    # PEFT places adapters in the listed layers only; autograd then records nothing below the lowest one, since
    # no tensor there needs a gradient: that is the whole saving, no code of ours runs it.
    layers, targets = None, cfg.target_modules
    if cfg.adapted_layers != "all":
        layers = list(range(num_layers - cfg.adapted_layers, num_layers))
        if targets == "all-linear":  # PEFT takes a layer list only with named targets: name the layers' linears
            targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.Linear) and ".layers." in name})
    return LoraConfig(task_type="CAUSAL_LM", r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      use_rslora=cfg.rslora, use_dora=cfg.method == "dora", target_modules=targets,
                      layers_to_transform=layers, bias="none")


def build_model(cfg: TrainConfig, model_dir: Path, device: str, precision: str):
    from peft import PeftModel, get_peft_model
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
    if cfg.init_adapter:
        return PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    return get_peft_model(model, lora_config(cfg, model))


def pinned_steps(cfg: TrainConfig, announced: int, rows: int, say) -> TrainConfig:
    """The steps the size rule announced, as the run's max_steps. Why: a packed row holds about batch_size
    conversations, so the Trainer, counting rows x passes, ran a few % off the number `train` printed (246 for 238).
    Never more than MAX_EPOCHS passes over the rows: where one long conversation sets the row size, many short ones
    share a row and the announced steps would be far more passes. (Distributed, each process takes its share of the
    rows; the Trainer's count is kept there.)"""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return cfg
    most = math.ceil(rows / cfg.grad_accum) * MAX_EPOCHS
    if announced > most:
        say(f"packed into {rows} rows: {most} steps ({MAX_EPOCHS} passes, the most the rule allows)")
    return dataclasses.replace(cfg, max_steps=min(announced, most))


def mark_emphasised(cfg: TrainConfig, train: list[Conversation], say) -> None:
    """Mark the training conversations `cfg.emphasised` names (by their first question), to be repeated
    cfg.emphasis times once grounded: repeated before, they would enter the knowledge base as duplicate pairs. Why
    repeat: ecombot learn's few corrections among many replayed conversations (learn/loop.py, Recipe)."""
    if cfg.emphasis <= 1:
        return
    named = {normalise_text(c.question) for c in read_file(cfg.emphasised).conversations}
    marked = [c for c in train if normalise_text(c.question) in named]
    for conv in marked:
        conv.meta["emphasised"] = True
    found = {normalise_text(c.question) for c in marked}
    say(f"{len(marked)} training conversations of {Path(cfg.emphasised).name} trained {cfg.emphasis} times per pass"
        + (f"; {len(named - found)} of its questions are not in the training split (held out, or not in the data)"
           if named - found else ""))


def training_arguments(cfg: TrainConfig, run: RunDir, device: str, precision: str, has_validation: bool):
    from transformers import TrainingArguments

    per_batch = 1 if cfg.packing else cfg.batch_size  # with packing, a batch is one packed row
    return TrainingArguments(
        output_dir=str(run.checkpoints_dir),
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
        save_steps=cfg.eval_steps,  # no save_total_limit: SupervisedTrainer prunes once the new one is complete
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


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> TrainResult:
    from transformers import EarlyStoppingCallback

    cfg, run, checkpoint = prepare_run_dir(cfg, resume, overwrite)
    main = is_main_process()

    # 1. Data: read, validate, split (the same seed gives the same split in every command). A catalog task first
    #    turns the catalog into conversations (train/tasks.py); a multi-task run splits each task's data on its own,
    #    so each test set is the one a run of that task alone holds out.
    say = print if main and show_progress else (lambda *_: None)
    cfg, task_lines, other_tasks = task_data(cfg, run, main)
    for line in task_lines:
        say(line)
    prepared = prepare(cfg.data, cfg.val_fraction, cfg.test_fraction, cfg.seed, product_question_maker(cfg, say))
    split, summary = prepared.split, prepared.report
    say(summary.summary_line())
    others = {task: prepare(path, cfg.val_fraction, cfg.test_fraction, cfg.seed).split for task, path in other_tasks}
    splits = [(split, run.data_dir), *((s, run.other_task_dir(task)) for task, s in others.items())]
    if resume and (changed := [f"{where.name}/{name}" for s, where in splits
                               for name in run.changed_split_files(split_files(s), where)]):
        raise EcombotError(f"{summary.path}: the data changed since this run started ({', '.join(changed)} in "
                           f"{run.path} differ); a resumed run must train on the same data: restore it, or start "
                           "a new run with --overwrite")
    if main:
        for s, where in splits:
            write_split(s, where, extra={"seed": cfg.seed, "source": summary.path if s is split else where.name})
    # The "auto" settings follow the data's size (config/train.py fit_to_data); the run records the numbers used.
    cfg, sized = fit_to_data(cfg, len(split.train) + sum(len(s.train) for s in others.values()))
    say(sized.reason)

    mark_emphasised(cfg, split.train, say)

    # 2. Knowledge: the training pairs join the store's documents in the knowledge base; every prompt gets the
    #    passages found for its question (train/grounding.py), as chat, serve and evaluate will give them. The other
    #    tasks of a multi-task run are not grounded (their prompts hold their products), and validation is shared
    #    out among the tasks so that it costs what one task's does.
    val_cap = cfg.eval_max_examples // len(cfg.tasks) if cfg.eval_max_examples else None
    train_convs, val_convs = split.train, split.validation[:val_cap]
    knowledge = None
    if cfg.grounded:
        parent = (RunDir(cfg.init_adapter).knowledge() or {}) if cfg.init_adapter else {}
        inherited = recorded_pairs(parent, cfg.knowledge) if parent else []  # a fresh adapter reads its own pairs
        grounded = ground_training_data(train_convs, val_convs, summary.path, cfg.knowledge, cfg.db, cfg.knowledge_k,
                                        cfg.handoff_share, cfg.handoff_answer, cfg.seed,
                                        ungrounded_share=cfg.ungrounded_share, rule_share=cfg.rule_share,
                                        index=main,
                                        inherited=inherited, documents=catalog_documents(cfg))
        train_convs, val_convs, knowledge = grounded.train, grounded.validation, grounded.record
        say(grounded.summary)
    # not one the grounding drew as a handoff example: repeated, it would teach handing over what it corrects
    handoff = knowledge["handoff"] if knowledge else None
    train_convs = train_convs + [c for c in train_convs
                                 if c.meta.get("emphasised") and c.answer != handoff] * (cfg.emphasis - 1)
    for task, s in others.items():
        train_convs, val_convs = train_convs + s.train, val_convs + s.validation[:val_cap]
    other_counts = {task: s.counts() for task, s in others.items()}
    if others:
        say(f"one adapter for {len(cfg.tasks)} tasks: "
            + ", ".join(f"{task} {len(s.train)}" for task, s in [(cfg.tasks[0], split), *others.items()])
            + " training conversations")

    # 3. Tokens: chat template applied, loss mask on assistant turns, truncation counted.
    model_dir = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    system_prompt = cfg.resolved_system_prompt()
    train_set = encode_conversations(train_convs, tokenizer, system_prompt, cfg.max_length)
    val_set = encode_conversations(val_convs, tokenizer, system_prompt, cfg.max_length)
    summary.add_token_lengths(train_set.lengths + val_set.lengths, cfg.max_length)
    summary.add_answer_lengths(answer_token_counts(tokenizer, [a for s in [split, *others.values()]
                                                               for c in s.train + s.validation for a in c.answers]))
    if not train_set.examples:
        raise EcombotError(f"{summary.path}: no training conversation has an answer within max_length={cfg.max_length}")
    cut, left_out = train_set.truncated + val_set.truncated, train_set.no_answer_left + val_set.no_answer_left
    if cut:
        say(f"{cut} conversation(s) longer than max_length={cfg.max_length} tokens, passages included, are cut there "
            f"(what follows is not trained on){f'; {left_out} kept no answer and are left out' if left_out else ''}; "
            "--max-length raises the limit")
    if main:
        run.write_json("data_summary.json", {**summary.to_dict(), "answer_cut_off_by_max_length": left_out,
                                               "split": split.counts(),
                                               **({"other_tasks": other_counts} if others else {})})

    # 4. Batches: packed rows of one fixed size (see models.PackedCollator), or padded batches.
    if cfg.packing:
        budget = pack_budget([len(e["input_ids"]) for e in train_set.examples + val_set.examples], cfg.batch_size)
        train_items, val_items = packed_rows(train_set.examples, budget), packed_rows(val_set.examples, budget)
        if sized.auto_steps and cfg.max_steps <= 0:
            cfg = pinned_steps(cfg, sized.auto_steps, len(train_items), say)
        collator = PackedCollator(tokenizer.pad_token_id, budget)
        packing = {"row_tokens": budget, "train_rows": len(train_items),
                   "padding_share": round(1 - sum(len(e["input_ids"]) for e in train_set.examples)
                                          / (budget * len(train_items)), 4)}
    else:
        train_items, val_items = train_set.examples, val_set.examples
        collator, packing = PadCollator(tokenizer.pad_token_id), None

    # 5. Model: base (4-bit for QLoRA) + fresh adapter (or the one it continues: `init_adapter`).
    device = pick_device()
    precision = resolve_precision(cfg.precision, device, training=True)
    model = build_model(cfg, model_dir, device, precision)
    applied = speedups.apply(model, mode="train", int8_gradients=precision == "int8")
    if precision == "int8" and not applied.changed.get("int8_gradients"):
        precision = "fp32"  # what the run computes, recorded as such (auto: said only where int8 was asked for)
        if cfg.precision == "int8":
            why = applied.off or "no plain LoRA layer on a frozen Linear: QLoRA, DoRA or dropout"
            say(f"precision int8: the int8 input gradients are off ({why}), so this run trains in fp32")
    say(precision_line(device, precision, cfg.precision))
    trainable, total = model.get_nb_trainable_parameters()
    run_info = {"config": cfg.to_dict(), "model_dir": str(model_dir), "device": device, "precision": precision,
                "system_prompt": system_prompt, "knowledge": knowledge, "recipe": sized.reason,
                "ecombot_version": __version__, "status": "running",
                "trainable_parameters": trainable, "total_parameters": total}
    if main:
        run.write_info(run_info)

    # 6. Train with Transformers' Trainer (early stopping on validation loss, best checkpoint kept).
    has_validation = bool(val_set.examples)
    logger = RunLogger(run.log_file, show_progress=show_progress)
    callbacks = [EvaluateAtEnd()]
    if has_validation and cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = SupervisedTrainer(
        model=model, args=training_arguments(cfg, run, device, precision, has_validation),
        train_dataset=train_items, eval_dataset=val_items or None,
        data_collator=collator, callbacks=callbacks, run_logger=logger, run=run, keep_checkpoints=cfg.save_total_limit,
        answer_only_backward=not cfg.prompt_gradients, parent_l2=cfg.parent_l2)
    started = time.time()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.time() - started

    # 7. Outputs: adapter (best by validation loss), curve, card, final status.
    if main:
        run.save_adapter(trainer.model)
    train_losses = [r["loss"] for r in run.train_log() if "loss" in r]
    state = trainer.state
    result = TrainResult(
        run=run, steps=state.global_step,
        best_step=int(state.best_model_checkpoint.rsplit("-", 1)[1]) if state.best_model_checkpoint else state.global_step,
        best_val_loss=state.best_metric, final_train_loss=train_losses[-1] if train_losses else None,
        train_seconds=round(train_seconds, 3), tokens_per_s=round(logger.tokens_per_second(), 1),
        stopped_early=state.global_step < state.max_steps, split=split.counts(),
        truncated=train_set.truncated + val_set.truncated, model_dir=str(model_dir), precision=precision, device=device,
        packing=packing, cpu_kernels=applied.cpu_kernels, speedups=applied.to_dict())
    if main:
        run.plot_loss_curve()
        run.write_text("README.md", model_card(cfg, summary, result, knowledge, sized.reason, other_counts))
        run.write_info({**run_info, "status": "complete", "results": result.to_dict()})
    return result
