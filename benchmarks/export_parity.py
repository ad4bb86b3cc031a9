"""Does an export answer like the bot did in ecombot? For held-out prompts of a run: greedy answers and held-out loss
of ecombot's engine at full precision (fp32, the adapter unmerged) against the merged export reloaded by plain
Transformers (its own chat template and generation_config stops), the plain PEFT model as a control, and each GGUF
export run by llama.cpp (llama-cpp-python): the merged model at f16, q8_0 and q4_k_m, and the base's own GGUF with
the adapter as a LoRA GGUF. llama.cpp is given ecombot's prompt token ids (and the share of prompts its own tokenizer
turns into the same ids is reported), so the answers compare the weights, not two tokenizers.

    python benchmarks/export_parity.py --run runs/quickstart [--prompts 100] [--max-new-tokens 48] [--gguf all|none]

Writes benchmarks/results/export_parity.json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

from ecombot.chat import Decoding, TransformersEngine  # noqa: E402
from ecombot.data import read_file  # noqa: E402
from ecombot.evaluate import heldout_loss  # noqa: E402
from ecombot.export import export_gguf, export_lora_gguf, export_merged  # noqa: E402
from ecombot.models.llama_cpp import answer_loss, greedy as llama_cpp_greedy, open_gguf  # noqa: E402
from ecombot.knowledge import Grounder, KnowledgeBase  # noqa: E402
from ecombot.models import (encode_conversation, encode_prompt, load_for_inference, never_output,  # noqa: E402
                            with_system)
from ecombot.models.vocab import mark_never_output  # noqa: E402
from ecombot.run_dir import RunDir  # noqa: E402


def greedy(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, eos: list[int] | None,
           suppress: list[int] | None = None) -> list[list[int]]:
    """One prompt at a time (no padding), as a plain Transformers user would call it; `suppress`: the export's
    suppress_tokens, for a model whose generation_config does not carry them (the plain PEFT control)."""
    out = []
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        kwargs = {"eos_token_id": eos} if eos else {}
        if suppress:
            kwargs["suppress_tokens"] = suppress
        with torch.inference_mode():
            out.append(model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
                       [0, ids.shape[1]:].tolist())
    return out


def gguf_paths(run: str, folder: Path) -> dict[str, tuple[Path, Path | None, float]]:
    """name -> (model GGUF, LoRA GGUF or None, export seconds)."""
    paths = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        started = time.time()
        record = export_gguf(run, folder / f"gguf-{quant}", quant=quant)
        paths[f"gguf_{quant}"] = (Path(record["output"]) / record["file"], None, time.time() - started)
    started = time.time()
    record = export_lora_gguf(run, folder / "lora-gguf")
    paths["q4_k_m_base_plus_lora_gguf"] = (Path(record["output"]) / record["base_file"],
                                           Path(record["output"]) / record["adapter_file"], time.time() - started)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gguf", choices=("all", "none"), default="all", help="also the GGUF exports in llama.cpp")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "export_parity.json"))
    args = parser.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunDir(args.run)
    test = read_file(run.data_dir / "test.jsonl").conversations[:args.prompts]
    record = run.knowledge()
    if record:  # a grounded run answers from its passages: the same prompts for every path
        grounder = Grounder(KnowledgeBase(record["db"], record["name"]).retriever(), record["k"], record["handoff"])
        prompts = [g.messages for g in grounder.ground_many([c.messages[:-1] for c in test])]
    else:
        prompts = [c.messages[:-1] for c in test]
    scored = [replace(c, messages=p + [c.messages[-1]]) for c, p in zip(test, prompts)]

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        export_merged(args.run, Path(tmp) / "merged")
        export_s = time.time() - started
        merged = AutoModelForCausalLM.from_pretrained(Path(tmp) / "merged").eval()
        exported_tokenizer = AutoTokenizer.from_pretrained(Path(tmp) / "merged")
    full = load_for_inference(adapter=args.run, precision="fp32")
    # plain greedy: the engine's default penalty on repeated answer tokens is not part of a model's weights
    engine = TransformersEngine(full, run.system_prompt(), Decoding(max_new_tokens=args.max_new_tokens, repetition_penalty=1.0))
    stops = engine.stop_ids
    # the look-alikes of the stop tokens every path leaves out (models/vocab.py): the engine does, the merged export's
    # generation_config says so, and a user passes the export's suppress_tokens to the others (README, Export)
    never = never_output(full.model)
    never = never.tolist() if never is not None else None
    mark_never_output(merged, stops)  # scored as ecombot scores (a Transformers load does not mark its head)
    ecombot_ids = [engine.tokenizer(g.text, add_special_tokens=False).input_ids for g in engine.generate(prompts)]
    merged_ids = greedy(merged, exported_tokenizer, prompts, args.max_new_tokens, None)
    plain_base = AutoModelForCausalLM.from_pretrained(str(full.model_dir)).eval()
    plain = PeftModel.from_pretrained(plain_base, str(run.live().path)).eval()
    mark_never_output(plain_base, stops)
    plain_ids = greedy(plain, exported_tokenizer, prompts, args.max_new_tokens, stops, never)

    def text(ids: list[int]) -> str:
        return exported_tokenizer.decode(ids, skip_special_tokens=True).strip()

    def identical(a: list[list[int]], b: list[list[int]], as_text: bool = False) -> float:
        return sum((text(x) == text(y)) if as_text else (x == y) for x, y in zip(a, b)) / len(a)

    system_prompt = run.system_prompt()
    losses = {"ecombot_fp32": heldout_loss(full.model, full.tokenizer, scored, system_prompt)["loss"],
              "merged": heldout_loss(merged, full.tokenizer, scored, system_prompt)["loss"]}
    if (run.info() or {}).get("config", {}).get("method") == "qlora":
        # what the adapter trained against (4-bit base) and the merge the export avoids (into the original weights)
        from ecombot.models import load_base_model

        four_bit = load_base_model(full.model_dir, quantize_4bit=True, device="cpu")  # marks its head
        losses["peft_on_4bit_base"] = heldout_loss(PeftModel.from_pretrained(four_bit, str(run.live().path)).eval(),
                                                   full.tokenizer, scored, system_prompt)["loss"]
        losses["peft_on_original_weights"] = heldout_loss(plain, full.tokenizer, scored, system_prompt)["loss"]
    gguf = {}
    if args.gguf == "all":
        prompt_ids = [encode_prompt(full.tokenizer, with_system(p, system_prompt)) for p in prompts]
        texts = [full.tokenizer.apply_chat_template(with_system(p, system_prompt), tokenize=False,
                                                    add_generation_prompt=True) for p in prompts]
        encoded = [encode_conversation(full.tokenizer, with_system(c.messages, system_prompt), 1024) for c in scored]
        with tempfile.TemporaryDirectory() as tmp:
            for name, (model_file, lora, seconds) in gguf_paths(args.run, Path(tmp)).items():
                llm = open_gguf(model_file, lora, n_ctx=1024)
                same_ids = sum(llm.tokenize(t.encode(), add_bos=False, special=True) == ids
                               for t, ids in zip(texts, prompt_ids)) / len(texts)
                started = time.time()
                answers = [llama_cpp_greedy(llm, ids, args.max_new_tokens, set(stops), never) for ids in prompt_ids]
                answer_s = time.time() - started
                del llm
                scorer = open_gguf(model_file, lora, n_ctx=1024, logits_all=True)
                total, count = answer_loss(scorer, encoded, never)
                loss = total / count
                del scorer
                finished = [ids for ids in answers if len(ids) < args.max_new_tokens]
                gguf[name] = {
                    "export_seconds": round(seconds, 1),
                    "size_mb": round(sum(f.stat().st_size for f in (model_file, lora) if f) / 2**20, 1),
                    "identical_text_vs_ecombot_engine": identical(answers, ecombot_ids, as_text=True),
                    "stopped_at_end_of_turn": sum(ids[-1] in stops for ids in finished) / max(1, len(finished)),
                    "llama_cpp_tokenizer_same_prompt_ids": same_ids,
                    "heldout_loss": loss,
                    "loss_relative_difference": abs(loss - losses["ecombot_fp32"]) / losses["ecombot_fp32"],
                    "greedy_seconds": round(answer_s, 1)}
                print(name, json.dumps(gguf[name]), flush=True)
    result = {
        "run": args.run, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "machine": machine(),
        "export_seconds": round(export_s, 1),
        "identical_tokens": {"merged_vs_plain_peft": identical(merged_ids, plain_ids)},
        "identical_text": {"merged_vs_ecombot_engine": identical(merged_ids, ecombot_ids, as_text=True),
                           "plain_peft_vs_ecombot_engine": identical(plain_ids, ecombot_ids, as_text=True)},
        "stopped_at_end_of_turn": sum(ids[-1] in stops for ids in merged_ids if len(ids) < args.max_new_tokens)
        / max(1, sum(len(ids) < args.max_new_tokens for ids in merged_ids)),
        "heldout_loss": losses,
        "loss_relative_difference": abs(losses["merged"] - losses["ecombot_fp32"]) / losses["ecombot_fp32"],
        "llama_cpp": gguf,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
