"""Tokens no answer may contain: the output head's look-alikes of the tokens that end an answer.

Why: Gemma 3 270M's head (tied to its embeddings) has 6,442 rows within cosine 0.9 of `<end_of_turn>`'s: its 4,540
`<unusedN>` tokens, byte tokens and pieces pre-training hardly saw ('SpringMVCProject', cuneiform signs), whose rows
stayed where `<end_of_turn>`'s did (the base model never ends a turn). The tokens of real text stay below 0.38. A
fine-tuned model ending its answer raises them all at once, so `<end_of_turn>` gets ~1/6,443 of that probability:
~8.8 nats of loss on every answer's last token, and greedy decoding picks a look-alike such as `<unused1401>`, which
stops nothing, so the answer runs on to the token budget (measured on a 63-pair FAQ adapter: 4 of 8 held-out
answers rambled on for 100+ tokens, "Thank you for your support! Thank you for your support! …"). The loss and
every engine leave these tokens out of the vocabulary: trained on the distribution decoding draws from, the model
learns when to stop, not which of 6,443 identical rows is the real one. A runtime that does not leave them out (Ollama,
llama-server, vLLM, a plain PEFT `generate`) still needs the model to rank the end-of-turn token above them, so
training adds, where the target is a stop token, the cross-entropy of that token among itself and its look-alikes
(speedups/head.py `lookalike_losses`): trained on the masked loss alone, the built-in quickstart adapter ended every
answer with a look-alike when nothing left them out.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

# Measured on Gemma 3 270M (Q4_K_M weights): look-alikes of <end_of_turn> lie at 0.90-1.00, the tokens of the
# built-in data, a second store's FAQ and policy below 0.38. A head without such a cluster (a tiny random one,
# another model family) has no row this close, and nothing is left out.
LOOKALIKE_COSINE = 0.9
COSINE_CHUNK = 4096  # head rows compared at a time: 10 MB of fp32 for Gemma's 640-wide rows (a transient at load)


def stop_lookalikes(head_weight: torch.Tensor, stop_ids: list[int], cosine: float = LOOKALIKE_COSINE) -> torch.Tensor:
    """Sorted ids of the head rows within `cosine` of any stop token's row, the stop tokens themselves excepted."""
    weight = head_weight.detach()
    stops = [s for s in stop_ids if 0 <= s < weight.shape[0]]
    if not stops:
        return torch.empty(0, dtype=torch.long)
    close = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    units = weight[stops].float()
    units = units / torch.linalg.vector_norm(units, dim=1, keepdim=True).clamp(min=1e-12)
    for start in range(0, weight.shape[0], COSINE_CHUNK):  # in fp32 (a bf16 head's rows too), a slice at a time
        rows = weight[start:start + COSINE_CHUNK].float()
        cosines = rows @ units.t() / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp(min=1e-12)
        close[start:start + COSINE_CHUNK] = (cosines >= cosine).any(dim=1)
    close[stops] = False
    return close.nonzero().squeeze(1).cpu()


def mark_never_output(model, stop_ids: list[int]) -> int:
    """Record on the model's output head which tokens no answer may contain (`head.never_output`, read by the loss
    and the engines); returns how many."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or not weight.is_floating_point() or weight.dim() != 2:
        return 0
    head.never_output = stop_lookalikes(weight, stop_ids)
    head.stop_ids = torch.tensor(sorted(stop_ids), dtype=torch.long)
    return len(head.never_output)


def never_output(model) -> torch.Tensor | None:
    """The ids `mark_never_output` recorded (None: none recorded, or an empty set)."""
    ids = getattr(model.get_output_embeddings(), "never_output", None)
    return ids if ids is not None and len(ids) else None


def never_output_in(model_dir: Path, stop_ids: list[int]) -> torch.Tensor:
    """`stop_lookalikes` of the head stored in a model directory's safetensors files (its `lm_head`, else the input
    embedding it is tied to), for an engine that runs no PyTorch model (llama.cpp) and an export's record."""
    stats = [(str(f), f.stat()) for f in sorted(Path(model_dir).resolve().glob("*.safetensors"))]
    return _lookalikes_in(tuple((name, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for name, s in stats),
                          tuple(stop_ids)).clone()


@functools.lru_cache(maxsize=4)
def _lookalikes_in(files: tuple[tuple[str, int, int, int, int], ...], stop_ids: tuple[int, ...]) -> torch.Tensor:
    """Kept per model files (name, inode, size and times: a rewritten or replaced file is read again), because
    reading Gemma's 670 MB embedding and comparing its rows takes ~1.6 s, at every llama.cpp engine start and export."""
    from safetensors import safe_open

    files = [file[0] for file in files]
    for suffix in ("lm_head.weight", "embed_tokens.weight"):
        for file in files:
            with safe_open(str(file), "pt") as weights:
                name = next((n for n in weights.keys() if n.endswith(suffix)), None)
                if name is not None:
                    return stop_lookalikes(weights.get_tensor(name), list(stop_ids))
    return torch.empty(0, dtype=torch.long)


def answer_cross_entropy(logits: np.ndarray, targets, never: np.ndarray | list[int] | None,
                         rows_per_block: int | None = None) -> np.ndarray:
    """Per row of `logits` (positions x vocabulary, from an engine that runs no PyTorch model: llama.cpp), the
    cross-entropy of its target, the tokens `never` left out as training leaves them out: the training loss's own
    blockwise cross-entropy (speedups.head.cross_entropy_rows) over the engine's logits."""
    from ecombot.speedups.head import ce_block_rows, cross_entropy_rows

    rows = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32).reshape(-1, np.shape(logits)[-1]))
    ids = torch.as_tensor(np.asarray(never, dtype=np.int64)) if never is not None and len(never) else None
    return cross_entropy_rows(rows, torch.as_tensor(np.asarray(targets, dtype=np.int64)),
                              rows_per_block or ce_block_rows(rows), None, ids).numpy()
