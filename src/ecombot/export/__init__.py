"""`ecombot export`: a trained bot taken out of ecombot, in the formats other tools load. One module per format;
llama_cpp.py holds llama.cpp's own converter and quantizer, which the GGUF formats use as they are."""

from ecombot.export.gguf import QUANTS, export_gguf, export_lora_gguf
from ecombot.export.merged import export_merged, export_source, merged_model, training_template
from ecombot.export.ollama import export_ollama, go_template

FORMATS = {"merged": export_merged, "gguf": export_gguf, "lora-gguf": export_lora_gguf, "ollama": export_ollama}

__all__ = ["FORMATS", "QUANTS", "export_gguf", "export_lora_gguf", "export_merged", "export_ollama", "export_source",
           "go_template", "merged_model", "training_template"]
