"""Both model families, their configs, checkpoints and the registry of names (loaded on first use)."""

from vlm.lazy import lazy_attributes

__getattr__ = lazy_attributes(globals(), {
    "CheckpointError": "vlm.models.checkpoint", "DualEncoder": "vlm.models.dual_encoder",
    "DualEncoderConfig": "vlm.models.config", "EarlyFusionConfig": "vlm.models.config",
    "EarlyFusionModel": "vlm.models.early_fusion", "FusionOutput": "vlm.models.early_fusion",
    "ImageTowerConfig": "vlm.models.config", "ModelConfig": "vlm.models.config",
    "TextTowerConfig": "vlm.models.config", "count_parameters": "vlm.models.registry",
    "create_model": "vlm.models.registry", "get_model_config": "vlm.models.registry",
    "image_size": "vlm.models.registry", "list_models": "vlm.models.registry",
    "load_model": "vlm.models.checkpoint", "save_model": "vlm.models.checkpoint",
})
