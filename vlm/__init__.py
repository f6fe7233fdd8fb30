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
from vlm.models.preprocess import model_transform
from vlm.models.vilt_compat import export_vilt, import_vilt
from vlm.tokenizer import Tokenizer, get_tokenizer

__all__ = [
    "CheckpointError", "DualEncoder", "EarlyFusionModel", "Tokenizer", "count_parameters", "create_model",
    "export_openclip", "export_vilt", "get_model_config", "get_tokenizer", "import_openclip", "import_vilt",
    "list_models", "load", "model_transform",
]
