"""`ecombot export`: a trained bot taken out of ecombot, in the formats other tools load. One module per format."""

from ecombot.export.merged import export_merged, merged_model, training_template

__all__ = ["export_merged", "merged_model", "training_template"]
