from vlm.models.checkpoint import CheckpointError, load_model, save_model
from vlm.models.config import (
    DualEncoderConfig,
    EarlyFusionConfig,
    ImageTowerConfig,
    ModelConfig,
    TextTowerConfig,
)
from vlm.models.dual_encoder import DualEncoder
from vlm.models.early_fusion import EarlyFusionModel, FusionOutput
from vlm.models.registry import count_parameters, create_model, get_model_config, image_size, list_models

__all__ = [
    "CheckpointError", "DualEncoder", "DualEncoderConfig", "EarlyFusionConfig", "EarlyFusionModel",
    "FusionOutput", "ImageTowerConfig", "ModelConfig", "TextTowerConfig", "count_parameters", "create_model",
    "get_model_config", "image_size", "list_models", "load_model", "save_model",
]
