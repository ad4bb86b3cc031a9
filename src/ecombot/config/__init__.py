"""Configuration of each stage in one place: training (train.py, defaults in default.yaml), evaluation
(evaluate.py), serving (serve.py), and the system prompts a model without its own is told (prompts.py)."""

from ecombot.config.evaluate import SYSTEMS, EvalConfig
from ecombot.config.prompts import BUILTIN_SYSTEM_PROMPT, GENERIC_SYSTEM_PROMPT
from ecombot.config.serve import ServeConfig
from ecombot.config.train import (FIELDS, METHODS, PRECISIONS, SizedRecipe, TrainConfig, default_yaml_text, fit_to_data,
                                  load_config)

__all__ = ["BUILTIN_SYSTEM_PROMPT", "EvalConfig", "FIELDS", "GENERIC_SYSTEM_PROMPT", "METHODS", "PRECISIONS", "SYSTEMS",
           "ServeConfig", "SizedRecipe", "TrainConfig", "default_yaml_text", "fit_to_data", "load_config"]
