"""ecombot: fine-tune a small open LLM into an e-commerce customer-support chatbot."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on import that it cannot fetch an optional CPU kernel from the Hugging Face Hub;
# ecombot works offline and does not need it, so the warning would only alarm users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
