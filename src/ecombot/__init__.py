"""ecombot: fine-tune a small open LLM into an e-commerce customer-support chatbot."""

import logging
import os

__version__ = "0.1.0"

# bitsandbytes warns on import that it cannot fetch an optional CPU kernel from the Hugging Face Hub;
# ecombot works offline and does not need it, so the warning would only alarm users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# oneDNN, which runs PyTorch's bf16 matmuls on CPUs, compiles a kernel for every new matrix shape and keeps 1024 of
# them by default. Support conversations come in many lengths, and each padded batch length needs its own set, so
# with the default a training run keeps evicting and recompiling: the second pass over 36 batch lengths took
# 27.6 / 28.3 / 30.4 s with the default vs 22.9 / 24.4 / 25.0 s with 16384 (Gemma 3 270M, 2-core Xeon), with no
# more peak memory. Set before torch loads oneDNN; a value the user exported wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
