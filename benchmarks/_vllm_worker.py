"""Run by vllm_check.py with the Python of a vLLM environment (it imports nothing of ecombot): the merged export as
the model, then the base model with the run's PEFT adapter as a LoRA request; greedy answers to the given token ids."""

import json
import sys
import time

from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest


def answer(llm, job, **kwargs) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], stop_token_ids=job["stop_ids"])
    started = time.time()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in job["prompt_ids"]], params, **kwargs)
    return {"tokens": [list(o.outputs[0].token_ids) for o in outputs], "texts": [o.outputs[0].text for o in outputs],
            "finish": [o.outputs[0].finish_reason for o in outputs], "answer_s": round(time.time() - started, 1)}


def load(**kwargs):
    started = time.time()
    # on the CPU backend this is the share of RAM kept for the KV cache (default 0.92: more than is free)
    llm = LLM(dtype="float32", max_model_len=2048, enforce_eager=True, seed=0, gpu_memory_utilization=0.2, **kwargs)
    return llm, round(time.time() - started, 1)


def main() -> None:
    job = json.load(open(sys.argv[1]))
    import vllm

    result = {"vllm": vllm.__version__, "answers": {}}
    llm, seconds = load(model=job["merged"])
    result["answers"]["merged export"] = {**answer(llm, job), "load_s": seconds}
    del llm
    llm, seconds = load(model=job["base"], enable_lora=True, max_lora_rank=64)
    request = LoRARequest("adapter", 1, job["adapter"])
    result["answers"]["base + PEFT adapter (enable_lora)"] = {**answer(llm, job, lora_request=request),
                                                             "load_s": seconds}
    json.dump(result, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
