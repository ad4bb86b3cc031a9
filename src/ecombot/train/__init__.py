"""Training stage: LoRA / QLoRA / DoRA fine-tuning on Transformers' Trainer."""

from ecombot.train.recipe import train
from ecombot.train.result import TrainResult

__all__ = ["TrainResult", "train"]
