"""Write a cached model with random weights from a model directory's config and tokenizer (no weights needed).

For machines the real weights cannot reach (a lent GPU box takes 64 MiB, Gemma 3 270M is 1 GB): speed and memory
do not depend on weight values, so the training benchmark can run on this copy. Losses do depend on them: the
held-out losses of such a run are those of an untrained model and compare nothing.

    python benchmarks/random_weights.py SOURCE_DIR "$ECOMBOT_HOME/models/gemma-3-270m"

SOURCE_DIR needs config.json and the tokenizer files; the output is complete (marker written last), so
`--model gemma-3-270m` resolves to it when it is the cache entry of the default model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")


def write_random_model(source: Path, output: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ecombot.models.registry import MARKER

    if not (source / "config.json").is_file():
        raise SystemExit(f"{source}: no config.json")
    if not (source / "tokenizer.json").is_file() and not (source / "tokenizer.model").is_file():
        raise SystemExit(f"{source}: no tokenizer.json or tokenizer.model")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, output / name)
    (output / MARKER).write_text(json.dumps({"source": f"random weights (seed {seed}) for {source}",
                                             "random_weights": True}, indent=2))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="directory with config.json and the tokenizer files")
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_random_model(args.source, args.output, args.seed))


if __name__ == "__main__":
    main()
