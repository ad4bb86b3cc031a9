"""Where an ecombot training step's time goes: wall time per step at several batch sizes, and on a GPU the
kernel time and kernel launches per step (PyTorch profiler), then the same steps through `ecombot train`.

Batches are built as `ecombot train` builds them: packed rows holding about `batch size` conversations each
(models.PackedCollator), or with --no-packing padded batches of `batch size` conversations (the form used at stop 10).
On an H100 this showed that Gemma 3 270M's steps are bound by the host (Python and kernel launches), not by the
GPU: see the README's Performance section.

    python benchmarks/step_profile.py --steps 20 --batch-sizes 8,32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402


def main() -> None:
    import torch

    from ecombot.config import TrainConfig
    from ecombot.data import builtin_path, prepare
    from ecombot.models import load_tokenizer, pick_device, resolve_model
    from ecombot.train import train
    from ecombot.models import PackedCollator, PadCollator, batch_tokens, encode_conversations, supervised_loss
    from ecombot.train.packing import pack_budget, packed_rows
    from ecombot import speedups
    from ecombot.train.recipe import build_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per batch size (the first two are warm-up)")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                        help="packed rows as `ecombot train` uses by default (--no-packing: padded batches)")
    parser.add_argument("--trainer-examples", type=int, default=640, help="conversations for the `ecombot train` run")
    parser.add_argument("--output", default="benchmarks/results/step_profile.json")
    args = parser.parse_args()

    device = pick_device()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cfg = TrainConfig(model=args.model, data=str(builtin_path()))
    model_dir = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    split = prepare(builtin_path(), 0.1, 0.1, 42).split
    examples = encode_conversations(split.train, tokenizer, None, cfg.max_length).examples
    model = build_model(cfg, model_dir, device, "bf16")
    speedups.apply(model, mode="train")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def batches_of(size: int) -> list[dict]:
        if not args.packing:
            collate = PadCollator(tokenizer.pad_token_id)
            return [collate(examples[i * size:(i + 1) * size]) for i in range(args.steps)]
        budget = pack_budget([len(e["input_ids"]) for e in examples], size)
        collate = PackedCollator(tokenizer.pad_token_id, budget)
        return [collate([row]) for row in packed_rows(examples, budget)[:args.steps]]

    def step(batch: dict) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = supervised_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    report: dict = {"machine": machine(), "device": device, "packing": args.packing, "steps": {}}
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        batches = batches_of(size)
        times = []
        for batch in batches:
            sync()
            started = time.perf_counter()
            step(batch)
            sync()
            times.append(time.perf_counter() - started)
        steady = sorted(times[2:]) or times
        tokens = sum(batch_tokens(b) for b in batches) / len(batches)
        report["steps"][size] = {"first_ms": times[0] * 1e3, "median_ms": steady[len(steady) // 2] * 1e3,
                                 "tokens_per_step": tokens}
        print(f"batch {size}: {tokens:.0f} tokens/step, first step {times[0] * 1e3:.0f} ms, "
              f"median after warm-up {steady[len(steady) // 2] * 1e3:.1f} ms", flush=True)

    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for batch in batches[2:5]:
                step(batch)
            sync()
        events = prof.key_averages()
        profiled = len(batches[2:5])
        kernel_ms = sum(e.self_device_time_total for e in events) / profiled / 1e3
        launches = sum(e.count for e in events if "LaunchKernel" in e.key) / profiled
        report["profile"] = {"batch_size": size, "gpu_kernel_ms_per_step": kernel_ms, "launches_per_step": launches}
        print(f"profiled batch {size}: GPU kernel time {kernel_ms:.1f} ms/step, {launches:.0f} kernel launches/step")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))

    del model, optimizer
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(c.to_json()) + "\n" for c in split.train[: args.trainer_examples]))
        # the plain step: fixed batch 8 and no knowledge base (benchmarks/train_throughput.py measures grounding)
        result = train(TrainConfig(model=args.model, data=str(data), output=str(Path(tmp) / "run"), epochs=1,
                                   val_fraction=0.0, test_fraction=0.0, packing=args.packing, batch_size=8,
                                   learning_rate=2e-4, knowledge="none"), show_progress=False)
    report["ecombot_train"] = {"steps": result.steps, "train_seconds": result.train_seconds}
    print(f"ecombot train: {result.steps} steps in {result.train_seconds} s "
          f"({result.train_seconds / result.steps * 1e3:.0f} ms/step)")
    write_results(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
