"""vlm: train, evaluate and serve late-fusion (CLIP) and early-fusion (ViLT) vision-language models."""

from vlm.lazy import lazy_attributes

__getattr__ = lazy_attributes(globals(), {
    "CheckpointError": "vlm.models.checkpoint", "DualEncoder": "vlm.models.dual_encoder",
    "EarlyFusionModel": "vlm.models.early_fusion", "Tokenizer": "vlm.tokenizer", "UserError": "vlm.errors",
    "count_parameters": "vlm.models.registry", "create_model": "vlm.models.registry",
    "export_openclip": "vlm.models.openclip_compat", "get_model_config": "vlm.models.registry",
    "get_tokenizer": "vlm.tokenizer", "import_openclip": "vlm.models.openclip_compat",
    "list_models": "vlm.models.registry", "load": "vlm.models.checkpoint:load_model",
    "export_vilt": "vlm.models.vilt_compat", "import_vilt": "vlm.models.vilt_compat",
    "model_transform": "vlm.models.preprocess",
})
