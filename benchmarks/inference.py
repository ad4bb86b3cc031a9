"""Generation speed: `ecombot chat`'s engine vs plain `model.generate` in fp32, on the same model, in one process.

For each question (round-robin over --repeats): time to first token and generated tokens per second of
  plain         AutoModelForCausalLM fp32 + chat template + model.generate (greedy, KV cache)
  ecombot-bf16  the TransformersEngine behind `ecombot chat` with bf16 weights (decode bits 16)
  ecombot-int8  the same with int8 weights for one-token steps and an int4 output head (the default of chat)
  ecombot-int4  the same with int4 weights for one-token steps (--decode-bits 4)
  llama.cpp-engine  `--engine llama.cpp`: the base model's GGUF (the embedded Q4_K_M) + the adapter as a LoRA GGUF
  llama.cpp-raw     llama-cpp-python's own `Llama.generate` (greedy) on the same files and prompt token ids
                    (skipped with --no-llama-cpp, or when llama-cpp-python is not installed)
plus, as the price in quality, each PyTorch engine's held-out loss through its decoding path (reference answers fed
one token at a time through the KV cache, so one-token steps use the low-bit weights), and the loss as `ecombot
evaluate` scores it for the bf16 engine and the llama.cpp engine (from llama.cpp's logits over the GGUF files), and the cached load time of the model. Ratios are taken per
question; the llama.cpp engine is also compared with raw llama.cpp and with the default engine (ecombot-int8).

    python benchmarks/inference.py --repeats 3 --adapter runs/quickstart
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, print_table, spread, write_results  # noqa: E402

QUESTIONS = ["Where is my order?", "Can I return a sofa I bought three weeks ago?",
             "Do you ship to Canada, and how long does it take?"]
ENGINES = {"ecombot-bf16": 16, "ecombot-int8": 8, "ecombot-int4": 4}


class FirstToken:
    """A streamer that only notes when the first generated token arrived."""

    def __init__(self):
        self.started, self.first, self.calls = time.perf_counter(), None, 0

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter() - self.started

    def end(self) -> None:
        pass


def plain_generate(model, tokenizer, question: str, max_new_tokens: int) -> tuple[float, float, int]:
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    streamer = FirstToken()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, streamer=streamer, pad_token_id=tokenizer.pad_token_id)
    return streamer.first, time.perf_counter() - streamer.started, out.shape[1] - ids.shape[1]


def engine_generate(engine, question: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None

    def on_text(row: int, text: str) -> None:
        nonlocal first
        if first is None:  # called once per generated token, with its text (empty while a character is partial)
            first = time.perf_counter() - started

    tokens = engine.generate([[{"role": "user", "content": question}]], on_text=on_text)[0].new_tokens
    return first, time.perf_counter() - started, tokens


def raw_llama_cpp(llm, engine, question: str, max_new_tokens: int) -> tuple[float, float, int]:
    """llama-cpp-python's own greedy loop over the prompt the engines answer (no repetition penalty: raw)."""
    started, first, tokens = time.perf_counter(), None, 0
    prompt = engine.prompt_ids([{"role": "user", "content": question}])
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        first = first or time.perf_counter() - started
        tokens += 1
        if token in engine.stop_ids or tokens >= max_new_tokens:
            break
    return first, time.perf_counter() - started, tokens


def teacher_forced_loss(engine, conversations) -> float:
    """Mean loss per answer token as `ecombot evaluate` scores it (whole conversations at once, through the engine:
    the PyTorch model's batched path, or llama.cpp's logits over its GGUF files): the column comparing the two."""
    from ecombot.evaluate.heldout import engine_item_losses

    sums, counts = engine_item_losses(engine, conversations, engine.default_adapter)
    return float(sums.sum() / counts.sum())


def decoding_path_loss(engine, conversations) -> float:
    """Mean loss per answer token over the tokens `ecombot evaluate` scores (the training template's encoding: each
    answer and its end-of-turn token), but fed one token at a time through the KV cache from the first answer token
    on, as when decoding (so one-token steps use the low-bit weights)."""
    import torch

    from ecombot.models.encoding import encode_conversations
    from ecombot.models.loss import logits_cross_entropy

    base = engine.model.get_base_model() if hasattr(engine.model, "get_base_model") else engine.model
    cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    encoded = encode_conversations(conversations, engine.tokenizer, engine.system_prompt(engine.default_adapter), 1024)
    device = engine.loaded.device
    total, count = 0.0, 0
    with torch.inference_mode():
        for example in encoded.examples:
            ids, labels = example["input_ids"], example["labels"]
            first = next(i for i, label in enumerate(labels) if label != -100)
            out = engine.model(input_ids=torch.tensor([ids[:first]], device=device), use_cache=True)
            for position in range(first, len(ids)):
                if labels[position] != -100:
                    target = torch.tensor([labels[position]], device=device)
                    total += float(logits_cross_entropy(engine.model, out.logits[:, -1].float(), target))  # as scored
                    count += 1
                if position + 1 < len(ids):
                    cache = getattr(out, "cache", None) or out.past_key_values
                    out = engine.model(input_ids=torch.tensor([[ids[position]]], device=device),
                                       **{cache_arg: cache}, use_cache=True)
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--adapter", help="run directory of an adapter for the ecombot engines (default: base model)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-examples", type=int, default=16, help="test conversations for the loss (0: skip)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="the engines' weights (auto: bf16 where the CPU has native bf16); low-bit one-token "
                             "steps apply to bf16 CPU models only")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp rows")
    parser.add_argument("--output", default="benchmarks/results/inference.json")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from ecombot.chat import Decoding, TransformersEngine
    from ecombot.data import builtin_path, prepare
    from ecombot.models import load_for_inference, load_tokenizer, resolve_model
    from ecombot.run_dir import RunDir

    model_dir = resolve_model(args.model)
    engines, load_s = {}, []
    for name, bits in ENGINES.items():
        started = time.perf_counter()
        loaded = load_for_inference(model=args.model, adapter=args.adapter, precision=args.precision)
        load_s.append(time.perf_counter() - started)
        engines[name] = TransformersEngine(loaded, None, Decoding(max_new_tokens=args.max_new_tokens))
        engines[name].speed_up_decoding(bits)
    tokenizer = load_tokenizer(model_dir)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    runners = {"plain": lambda q: plain_generate(plain, tokenizer, q, args.max_new_tokens),
               **{name: (lambda q, e=engine: engine_generate(e, q)) for name, engine in engines.items()}}
    llama = None
    if not args.no_llama_cpp and importlib.util.find_spec("llama_cpp"):
        from ecombot.chat import open_engine
        from ecombot.models import llama_cpp

        started = time.perf_counter()
        llama = open_engine(args.model, [("adapter", Path(args.adapter))] if args.adapter else [],
                            Decoding(max_new_tokens=args.max_new_tokens), system_prompt=None, engine="llama.cpp",
                            max_batch=1)
        print(f"llama.cpp engine loaded in {time.perf_counter() - started:.1f} s (adapter converted once, cached)")
        lora = (llama_cpp.adapter_gguf(RunDir(args.adapter).live().path, model_dir) if args.adapter else None)
        raw = llama_cpp.open_gguf(llama.gguf, lora, n_ctx=2048)
        runners["llama.cpp-engine"] = lambda q: engine_generate(llama, q)
        runners["llama.cpp-raw"] = lambda q: raw_llama_cpp(raw, llama, q, args.max_new_tokens)
    for run in runners.values():
        run("Hello")  # warm-up, not counted

    rows: dict[str, list[dict]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for question in QUESTIONS:
            for name, run in runners.items():
                first, seconds, tokens = run(question)
                rows[name].append({"ttft_s": first, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
    summary = {name: {**({"precision": engines[name].loaded.precision, "low_bit_layers": engines[name].low_bit_layers}
                         if name in engines else {}),
                      "tokens_per_s": spread([r["tokens_per_s"] for r in runs]),
                      "ttft_ms": spread([1000 * r["ttft_s"] for r in runs]),
                      "speedup_vs_plain": spread([r["tokens_per_s"] / p["tokens_per_s"] for r, p in zip(runs, rows["plain"])])}
               for name, runs in rows.items()}
    if llama is not None:
        for name, other in (("vs_raw_llama_cpp", "llama.cpp-raw"), ("vs_default_engine", "ecombot-int8")):
            summary["llama.cpp-engine"][name] = spread([r["tokens_per_s"] / o["tokens_per_s"]
                                                        for r, o in zip(rows["llama.cpp-engine"], rows[other])])
    if args.quality_examples:
        test = prepare(builtin_path(), 0.1, 0.1, 42).split.test[:args.quality_examples]
        for name, engine in engines.items():
            summary[name]["decoding_path_loss"] = decoding_path_loss(engine, test)
        summary["ecombot-bf16"]["teacher_forced_loss"] = teacher_forced_loss(engines["ecombot-bf16"], test)
        if llama is not None:
            summary["llama.cpp-engine"]["teacher_forced_loss"] = teacher_forced_loss(llama, test)
    print(f"\n{len(QUESTIONS)} questions x {args.repeats} repeats, up to {args.max_new_tokens} new tokens: median [min-max]")
    print_table(["system", "tokens/s", "first token ms", "vs plain", "held-out loss (decoding path)",
                 "held-out loss (as evaluate scores)"],
                [[name, fmt(s["tokens_per_s"]), fmt(s["ttft_ms"], 0), fmt(s["speedup_vs_plain"], 2) + "x",
                  *(f"{s[key]:.4f}" if key in s else "-" for key in ("decoding_path_loss", "teacher_forced_loss"))]
                 for name, s in summary.items()])
    print(f"cached model load (load_for_inference): {fmt(spread(load_s), 2)} s")
    if llama is not None:
        s = summary["llama.cpp-engine"]
        print(f"llama.cpp engine: {fmt(s['vs_raw_llama_cpp'], 2)}x raw llama.cpp, "
              f"{fmt(s['vs_default_engine'], 2)}x the default engine (ecombot-int8) in tokens/s")
    write_results(args.output, {"machine": machine(), "model": args.model, "adapter": args.adapter,
                                "max_new_tokens": args.max_new_tokens, "load_s": spread(load_s),
                                "summary": summary, "runs": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
