"""ecombot: fine-tune a small open LLM into an e-commerce customer-support chatbot."""

__version__ = "0.1.0"
