"""Evaluation stage (held-out loss for now; the full comparison report comes with `ecombot evaluate`)."""

from ecombot.evaluate.loss import heldout_loss

__all__ = ["heldout_loss"]
