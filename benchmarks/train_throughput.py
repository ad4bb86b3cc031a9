"""Training throughput, peak memory and held-out loss: ecombot vs the plain PEFT notebook recipe vs TRL.

Every system trains one epoch on the same single-turn conversations of the built-in dataset, each in its own
process (so peak memory is its own), in round-robin over --repeats; ratios are taken within a repeat.

  notebook  HF Trainer + PEFT LoRA (r=16, alpha=32, dropout 0.05, PEFT's default targets), fp32,
            "question ->: answer" text, DataCollatorForLanguageModeling(mlm=False), batch 2, grad. accum. 2, lr 2e-4
  trl       TRL SFTTrainer with its defaults (prompt/completion data, completion-only loss) + the same LoRA
  ecombot   `ecombot train` defaults (one epoch, no validation split), batch 8, without a knowledge base; precision
            auto: bf16 where the CPU has it natively, int8 input gradients on other x86 CPUs (since stop 52; fp32
            before), as recorded per run
  ecombot-qlora   the same with --method qlora (4-bit NF4 base)
  ecombot-grounded  the same as ecombot, grounded: every prompt carries 3 passages from the built-in policy and the
            training pairs (retrieval-augmented fine-tuning, `ecombot train`'s default); only the answers are scored
  NAME@N    an ecombot system with adapters in the top N decoder layers only (`adapted_layers: N`): the layers
            below run without a backward pass
  NAME+answers  an ecombot system with answer-only backward (`prompt_gradients: false`): the prompt tokens run
            once without autograd, the backward pass goes through the answer tokens only (e.g. ecombot-grounded+answers)
  NAME+eager  an ecombot system without the fused C kernels (ECOMBOT_CPU_KERNELS=0: PyTorch's ops for the norms, the
            MLP activation and the head's softmax), to measure what the kernels give on this CPU and precision
  NAME+int8, NAME+fp32  an ecombot system at that precision whatever --precision says (int8: fp32 with the frozen
            base's products in int8, on CPUs), to compare precisions side by side in one run

Throughput = answer tokens of the training conversations / training wall time (the same numerator for every
system, so the ratio is the ratio of times for the same data). Held-out loss = mean loss per answer token of
the test conversations in the format each system was trained on.

    python benchmarks/train_throughput.py --examples 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (WorkerFailed, fmt, machine, peak_gpu_mb, peak_rss_mb, print_table, run_worker,  # noqa: E402
                     spread, write_results)

SYSTEMS = ["notebook", "trl", "ecombot", "ecombot-qlora", "ecombot-grounded"]


def conversations(n_train: int, n_test: int):
    """Single-turn conversations (a question and its answer) from the built-in split, seed 42."""
    from ecombot.data import builtin_path, prepare

    split = prepare(builtin_path(), 0.1, 0.1, 42).split
    single = lambda convs: [c for c in convs if [m["role"] for m in c.messages] == ["user", "assistant"]]
    return single(split.train)[:n_train], single(split.test)[:n_test]


def answer_tokens(tokenizer, convs) -> int:
    return sum(len(tokenizer(c.answer, add_special_tokens=False)["input_ids"]) for c in convs)


def lora_like_the_notebook():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM")


def use_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def peak_memory() -> dict:
    """Taken when training ends (before the held-out loss, which loads a second copy for ecombot)."""
    gpu = peak_gpu_mb()
    return {"peak_rss_mb": peak_rss_mb(), **({"peak_gpu_mb": gpu} if gpu is not None else {})}


def notebook_text_loss(model, tokenizer, convs) -> float:
    """Loss per answer token with the question given, in the notebook's `question ->: answer` format."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for conv in convs:
            prompt = tokenizer(f"{conv.question} ->: ")["input_ids"]
            answer = tokenizer(f"{conv.answer}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + answer], device=model.device)
            labels = torch.tensor([[-100] * len(prompt) + answer], device=model.device)
            total += float(model(input_ids=ids, labels=labels).loss) * len(answer)
            count += len(answer)
    return total / count


def train_notebook(model_dir: Path, train, test, out: Path) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora_like_the_notebook())
    texts = [f"{c.question} ->: {c.answer}{tokenizer.eos_token}" for c in train]
    dataset = [tokenizer(t, truncation=True, max_length=512) for t in texts]
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             learning_rate=2e-4, num_train_epochs=1, logging_steps=10, save_strategy="no",
                             report_to="none", use_cpu=use_cpu(), seed=42, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    peak = peak_memory()
    return {"seconds": seconds, "steps": trainer.state.global_step, **peak,
            "heldout_loss": notebook_text_loss(model, tokenizer, test)}


def train_trl(model_dir: Path, train, test, out: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ecombot.evaluate import heldout_loss
    from ecombot.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": c.question}],
                               "completion": [{"role": "assistant", "content": c.answer}]} for c in train])
    args = SFTConfig(output_dir=str(out), num_train_epochs=1, save_strategy="no", report_to="none", use_cpu=use_cpu(),
                     seed=42, disable_tqdm=True)
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_like_the_notebook())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    peak = peak_memory()
    loss = heldout_loss(trainer.model, tokenizer, test, None)["loss"]
    return {"seconds": seconds, "steps": trainer.state.global_step, **peak, "heldout_loss": loss}


def train_ecombot(model_spec: str, train, test, out: Path, method: str, grounded: bool = False,
                  precision: str = "auto", adapted_layers: int | str = "all", prompt_gradients: bool = True) -> dict:
    from ecombot.config import TrainConfig
    from ecombot.data.builtin import policy_path
    from ecombot.evaluate import heldout_loss
    from ecombot.knowledge import KnowledgeBase
    from ecombot.models import load_for_inference
    from ecombot.train import train as ecombot_train

    data = out / "train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(c.to_json()) + "\n" for c in train))
    db = f"sqlite:///{out / 'knowledge.db'}"
    if grounded:
        KnowledgeBase(db, "bench").add_files([policy_path()])
    cfg = TrainConfig(model=model_spec, data=str(data), output=str(out / "run"), epochs=1, val_fraction=0.0,
                      test_fraction=0.0, method=method, batch_size=8, learning_rate=2e-4,
                      knowledge="bench" if grounded else "none", db=db, precision=precision,
                      adapted_layers=adapted_layers, prompt_gradients=prompt_gradients)
    result = ecombot_train(cfg, show_progress=False)
    peak = peak_memory()
    if grounded:  # the held-out questions asked as a grounded bot is asked them: with their passages
        from ecombot.knowledge import Grounder
        from ecombot.train.grounding import ground_split

        test = ground_split(test, Grounder(KnowledgeBase(db, "bench").retriever()), 0.0, 0, documents_only_share=0.0,
                            fact_edit_share=0.0)
    loaded = load_for_inference(model=model_spec, adapter=result.run.path)
    system_prompt = result.run.system_prompt()
    loss = heldout_loss(loaded.model, loaded.tokenizer, test, system_prompt)["loss"]
    return {"seconds": result.train_seconds, "steps": result.steps, **peak, "heldout_loss": loss,
            "precision": result.precision, "cpu_kernels": result.cpu_kernels}


def worker(args) -> None:
    if args.eager:
        os.environ["ECOMBOT_CPU_KERNELS"] = "0"  # read when the kernels are first asked for, in training
    from ecombot.models import load_tokenizer, resolve_model

    model_dir = resolve_model(args.model)
    train, test = conversations(args.examples, args.eval_examples)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.worker == "notebook":
            result = train_notebook(model_dir, train, test, out)
        elif args.worker == "trl":
            result = train_trl(model_dir, train, test, out)
        else:
            result = train_ecombot(args.model, train, test, out, "qlora" if args.worker == "ecombot-qlora" else "lora",
                                   grounded=args.worker == "ecombot-grounded", precision=args.precision,
                                   adapted_layers=args.adapted_layers,  # TrainConfig reads "9" as 9
                                   prompt_gradients=not args.answer_only)
    result["answer_tokens"] = answer_tokens(load_tokenizer(model_dir), train)
    result["tokens_per_s"] = result["answer_tokens"] / result["seconds"]
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--examples", type=int, default=64, help="training conversations (one epoch)")
    parser.add_argument("--eval-examples", type=int, default=32, help="test conversations for held-out loss")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated; an ecombot system as NAME@N puts its adapters in the top N decoder "
                             "layers only (adapted_layers), NAME+answers trains with answer-only backward "
                             "(prompt_gradients: false), NAME+eager without the fused C kernels, e.g. "
                             "ecombot-grounded,ecombot-grounded@9,ecombot-grounded+answers,ecombot+eager")
    parser.add_argument("--output", default="benchmarks/results/train_throughput.json")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32", "int8"),
                        help="ecombot's precision: fp32 measures the path of CPUs without AVX-512 BF16")
    parser.add_argument("--adapted-layers", default="all", help=argparse.SUPPRESS)  # a worker's, from SYSTEM@N
    parser.add_argument("--answer-only", action="store_true", help=argparse.SUPPRESS)  # a worker's: NAME+answers
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)  # a worker's: NAME+eager
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    systems = [s for s in args.systems.split(",") if s]
    worker_args = {}  # system -> its worker's system, adapted layers, backward and precision
    for system in systems:
        spec, *modifiers = system.split("+")
        name, at, layers = spec.partition("@")
        if (name not in SYSTEMS or (at and not layers.isdigit())
                or not set(modifiers) <= {"answers", "eager", "int8", "fp32"}
                or ((at or modifiers) and not name.startswith("ecombot"))):
            parser.error(f"--systems: {system!r} is not one of {', '.join(SYSTEMS)} (ecombot ones may end in @N, "
                         "+answers, +eager, +int8 or +fp32)")
        worker_args[system] = ["--worker", name, "--adapted-layers", layers or "all",
                               *(["--answer-only"] * ("answers" in modifiers)), *(["--eager"] * ("eager" in modifiers)),
                               *[arg for m in ("int8", "fp32") if m in modifiers for arg in ("--precision", m)]]
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    failures: dict[str, str] = {}
    common = ["--model", args.model, "--examples", str(args.examples), "--eval-examples", str(args.eval_examples),
              "--precision", args.precision]
    for repeat in range(args.repeats):
        for system in systems:  # round-robin: drifts of a noisy machine hit every system alike
            if system in failures:
                continue
            try:
                result = run_worker(__file__, [*common, *worker_args[system]])
            except WorkerFailed as exc:  # reported and left out of later repeats; the others still run
                failures[system] = str(exc.code)
                print(f"repeat {repeat + 1}/{args.repeats} {system}: FAILED\n{exc.code}", flush=True)
                continue
            runs[system].append(result)
            gpu = f", GPU peak {result['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in result else ""
            print(f"repeat {repeat + 1}/{args.repeats} {system}: {result['seconds']:.1f} s, "
                  f"{result['tokens_per_s']:.1f} answer tok/s, peak {result['peak_rss_mb']:.0f} MB{gpu}, "
                  f"held-out loss {result['heldout_loss']:.3f}", flush=True)
            save(args, runs, failures)  # a run cut short still leaves every finished measurement

    baseline = systems[0]
    if baseline in failures:
        raise SystemExit(f"the baseline {baseline} failed, so there is nothing to compare with (see above)")
    summary = {s: summarize(runs[s], runs[baseline], baseline) for s in systems if s not in failures}
    gpu = all("peak_gpu_mb" in s for s in summary.values())
    rows = [[s, str(summary[s]["optimizer_steps"]), fmt(summary[s]["seconds"]), fmt(summary[s]["tokens_per_s"]),
             fmt(summary[s][f"speedup_vs_{baseline}"], 2) + "x", fmt(summary[s]["peak_rss_mb"], 0),
             *([fmt(summary[s]["peak_gpu_mb"], 0)] if gpu else []), fmt(summary[s]["heldout_loss"], 3)]
            for s in summary]
    rows += [[s, "FAILED", *[""] * (len(rows[0]) - 2)] for s in failures]
    print(f"\none epoch over {args.examples} conversations, {args.repeats} repeats: median [min-max]")
    print_table(["system", "steps", "train s", "answer tok/s", f"vs {baseline}", "peak RSS MB",
                 *(["peak GPU MB"] if gpu else []), "held-out loss"], rows)
    save(args, runs, failures, summary)
    print(f"wrote {args.output}")
    if failures:
        raise SystemExit(f"failed: {', '.join(failures)}")


def summarize(runs: list[dict], baseline_runs: list[dict], baseline: str) -> dict:
    """Median [min-max] of each figure; speedups are taken within a repeat (same minutes of a noisy machine)."""
    summary = {"seconds": spread([r["seconds"] for r in runs]),
               "tokens_per_s": spread([r["tokens_per_s"] for r in runs]),
               f"speedup_vs_{baseline}": spread([b["seconds"] / r["seconds"] for r, b in zip(runs, baseline_runs)]),
               "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs]),
               "heldout_loss": spread([r["heldout_loss"] for r in runs]),
               "optimizer_steps": runs[0]["steps"]}
    if all("peak_gpu_mb" in r for r in runs):
        summary["peak_gpu_mb"] = spread([r["peak_gpu_mb"] for r in runs])
    return summary


def save(args, runs: dict, failures: dict, summary: dict | None = None) -> None:
    write_results(args.output, {"machine": machine(), "model": args.model, "examples": args.examples,
                                "eval_examples": args.eval_examples, "repeats": args.repeats, "summary": summary,
                                "failures": failures, "runs": runs})


if __name__ == "__main__":
    main()
