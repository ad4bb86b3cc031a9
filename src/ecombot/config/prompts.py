"""The system prompts ecombot tells a model that was not trained with one of its own."""

# What the base model (no adapter) is told, in chat, serving and evaluation: it has not learned the store's voice.
# A fine-tuned adapter is told the prompt its run was trained with (none by default: see `system_prompt`).
BUILTIN_SYSTEM_PROMPT = (
    "You are the customer support assistant of Harbor & Pine, an online home goods store. "
    "Answer briefly and follow the store's policies."
)
GENERIC_SYSTEM_PROMPT = (
    "You are a customer support assistant for an online store. Answer briefly and follow the store's policies."
)
