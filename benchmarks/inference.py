"""Generation speed: `ecombot chat`'s engine vs plain `model.generate` in fp32, on the same model, in one process.

For each question (round-robin over --repeats): time to first token and generated tokens per second of
  plain     AutoModelForCausalLM fp32 + chat template + model.generate (greedy, KV cache), a streamer timing
            the first token
  ecombot   the TransformersEngine behind `ecombot chat` (bf16 weights where the CPU has bf16, answer-only
            repetition penalty), its per-token callback timing the first token
and the cached load time of the model directory. Ratios are taken per question.

    python benchmarks/inference.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, print_table, spread  # noqa: E402

QUESTIONS = ["Where is my order?", "Can I return a sofa I bought three weeks ago?",
             "Do you ship to Canada, and how long does it take?"]


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
    seconds = time.perf_counter() - streamer.started
    return streamer.first, seconds, out.shape[1] - ids.shape[1]


def ecombot_generate(engine, question: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    tokens = 0

    def on_text(row: int, text: str) -> None:
        nonlocal first
        if first is None:  # called once per generated token, with its text (empty while a character is partial)
            first = time.perf_counter() - started

    tokens = engine.generate([[{"role": "user", "content": question}]], on_text=on_text)[0].new_tokens
    return first, time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--adapter", help="run directory of an adapter for the ecombot engine (default: base model)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/inference.json")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from ecombot.chat import Decoding, TransformersEngine
    from ecombot.models import load_for_inference, load_tokenizer, resolve_model

    model_dir = resolve_model(args.model)
    started = time.perf_counter()
    loaded = load_for_inference(model=args.model, adapter=args.adapter)
    load_s = time.perf_counter() - started
    engine = TransformersEngine(loaded, None, Decoding(max_new_tokens=args.max_new_tokens))
    tokenizer = load_tokenizer(model_dir)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    plain_generate(plain, tokenizer, "Hello", 4)  # warm-up both, not counted
    ecombot_generate(engine, "Hello")

    rows = {"plain": [], "ecombot": []}
    for _ in range(args.repeats):
        for question in QUESTIONS:
            for name, run in [("plain", lambda q: plain_generate(plain, tokenizer, q, args.max_new_tokens)),
                              ("ecombot", lambda q: ecombot_generate(engine, q))]:
                first, seconds, tokens = run(question)
                rows[name].append({"ttft_s": first, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
    summary = {name: {"tokens_per_s": spread([r["tokens_per_s"] for r in runs]),
                      "ttft_ms": spread([1000 * r["ttft_s"] for r in runs])} for name, runs in rows.items()}
    summary["ecombot"]["speedup_vs_plain"] = spread([e["tokens_per_s"] / p["tokens_per_s"]
                                                     for e, p in zip(rows["ecombot"], rows["plain"])])
    print(f"\n{len(QUESTIONS)} questions x {args.repeats} repeats, up to {args.max_new_tokens} new tokens: median [min-max]")
    print_table(["system", "tokens/s", "first token ms", "vs plain"],
                [["plain fp32 generate", fmt(summary["plain"]["tokens_per_s"]), fmt(summary["plain"]["ttft_ms"], 0), "1.00x"],
                 [f"ecombot ({loaded.precision})", fmt(summary["ecombot"]["tokens_per_s"]),
                  fmt(summary["ecombot"]["ttft_ms"], 0), fmt(summary["ecombot"]["speedup_vs_plain"], 2) + "x"]])
    print(f"cached model load (load_for_inference): {load_s:.2f} s")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine(), "model": args.model, "adapter": args.adapter,
                                             "max_new_tokens": args.max_new_tokens, "load_s": load_s,
                                             "summary": summary, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
