"""Training stage: LoRA / QLoRA / DoRA fine-tuning on Transformers' Trainer."""

from ecombot.train.recipe import TrainResult, train

__all__ = ["TrainResult", "train"]
