"""Where a quickstart training step's time goes on this CPU, by PyTorch operator, beside the machine's own matrix
product rate: whether a step is bound by arithmetic (only doing less work helps) or by something else.

Runs `ecombot train` with the quickstart's settings (grounded in its knowledge base 'harbor-pine', batch 8, the
machine's precision) for --steps steps and profiles the last two (PyTorch profiler, CPU operators by self time).
The knowledge base is built as the quickstart builds it where it does not exist yet.

    python benchmarks/step_ops.py --steps 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

PROFILED_STEPS = 2


def matmul_gflops(dtype, size: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    import torch
    from transformers import TrainerCallback

    from ecombot.config import load_config
    from ecombot.models import resolve_precision
    from ecombot.quickstart import KNOWLEDGE, REFERENCE, build_knowledge
    from ecombot.train import train
    from ecombot.train import trainer as trainer_module

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--steps", type=int, default=4, help="training steps; the last two are profiled")
    parser.add_argument("--top", type=int, default=12, help="operators kept in the results")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32", "int8"))
    parser.add_argument("--output", default="benchmarks/results/step_ops.json")
    args = parser.parse_args()
    if args.steps < PROFILED_STEPS + 1:
        parser.error(f"--steps must be at least {PROFILED_STEPS + 1} (the first step warms up)")

    precision = resolve_precision(args.precision, training=True)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rate = matmul_gflops(dtype)
    print(f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} 2048 x 2048 matrix product: {rate:.0f} GFLOP/s", flush=True)

    report: dict = {}

    class Profile(TrainerCallback):
        """Profiles the last PROFILED_STEPS steps, then ends the run without the validation and checkpoint the
        trainer would add after its last step (this callback comes after the trainer's own)."""

        def __init__(self, run_logger):
            self.run_logger = run_logger

        def on_step_begin(self, cb_args, state, control, **kwargs):
            if state.global_step == args.steps - PROFILED_STEPS:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.__enter__()
                self.started, self.tokens = time.perf_counter(), self.run_logger.tokens

        def on_step_end(self, cb_args, state, control, **kwargs):
            if state.global_step == args.steps:
                self.profiler.__exit__(None, None, None)
                seconds = time.perf_counter() - self.started
                report.update(step_s=seconds / PROFILED_STEPS, events=self.profiler.key_averages(),
                              tokens_per_s=(self.run_logger.tokens - self.tokens) / seconds)
                control.should_evaluate = control.should_save = False

    original_init = trainer_module.SupervisedTrainer.__init__

    def with_profile(self, *a, **k):
        original_init(self, *a, **k)
        self.add_callback(Profile(self.run_logger))

    trainer_module.SupervisedTrainer.__init__ = with_profile
    build_knowledge()
    with tempfile.TemporaryDirectory() as tmp:
        # validation only at the end (which the profiler's callback skips), so no step in the window validates
        cfg = load_config(None, output=str(Path(tmp) / "run"), model=args.model, knowledge=KNOWLEDGE,
                          **{**REFERENCE.train, "max_steps": args.steps, "eval_steps": args.steps,
                             "logging_steps": args.steps, "early_stopping_patience": 0, "precision": precision})
        result = train(cfg, overwrite=True, show_progress=False)
    events = report.pop("events")
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / PROFILED_STEPS
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    table = [{"op": e.key, "s_per_step": round(e.self_cpu_time_total / 1e6 / PROFILED_STEPS, 3),
              "share": round(e.self_cpu_time_total / 1e6 / PROFILED_STEPS / total, 4),
              "calls_per_step": e.count // PROFILED_STEPS} for e in ops]
    print(f"step: {report['step_s']:.2f} s ({result.precision}, {report['tokens_per_s']:.0f} tokens/s)")
    for row in table:
        print(f"  {row['op']:<28} {row['s_per_step']:8.3f} s  {row['share']:6.1%}  {row['calls_per_step']} calls")
    write_results(args.output, {"machine": machine(), "precision": result.precision,
                                "matmul_2048_gflops": round(rate, 1), "step_s": round(report["step_s"], 2),
                                "tokens_per_s": round(report["tokens_per_s"], 1), "profiled_self_s_per_step": round(total, 2),
                                "ops": table})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
