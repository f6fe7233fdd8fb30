"""vlm: train, evaluate and serve late-fusion (CLIP) and early-fusion (ViLT) vision-language models."""

from vlm.models import (
    CheckpointError,
    DualEncoder,
    EarlyFusionModel,
    count_parameters,
    create_model,
    get_model_config,
    list_models,
)
from vlm.models import load_model as load
from vlm.models.openclip_compat import export_openclip, import_openclip
from vlm.tokenizer import Tokenizer, get_tokenizer

__all__ = [
    "CheckpointError", "DualEncoder", "EarlyFusionModel", "Tokenizer", "count_parameters", "create_model",
    "export_openclip", "get_model_config", "get_tokenizer", "import_openclip", "list_models", "load",
]
