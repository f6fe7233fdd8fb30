"""One registry of model names: every YAML file in configs/models/ is a name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vlm.config import ConfigError, apply_overrides, read_yaml, shipped_configs
from vlm.models.config import DualEncoderConfig, EarlyFusionConfig, ModelConfig, model_config_from_dict

if TYPE_CHECKING:
    from torch import nn

CONFIG_DIR = shipped_configs() / "models"  # found from any working directory, in a checkout or a wheel


def list_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def get_model_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """A named config (`clip-small`) or a YAML file, with optional `key=value` overrides."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown model {str(name_or_path)!r}; known: {', '.join(list_models())}")
    data = apply_overrides(read_yaml(path), overrides or [])
    return model_config_from_dict(data, where=str(path))


def build_model(config: ModelConfig) -> nn.Module:
    from vlm.models.dual_encoder import DualEncoder
    from vlm.models.early_fusion import EarlyFusionModel

    if isinstance(config, DualEncoderConfig):
        return DualEncoder(config)
    if isinstance(config, EarlyFusionConfig):
        return EarlyFusionModel(config)
    raise TypeError(f"not a model config: {type(config).__name__}")


def create_model(name_or_path: str | Path | ModelConfig, overrides: list[str] | None = None) -> nn.Module:
    """`create_model("clip-small")`, `create_model("my.yaml")` or `create_model(config)`: random init."""
    if isinstance(name_or_path, (DualEncoderConfig, EarlyFusionConfig)):
        return build_model(name_or_path)
    return build_model(get_model_config(name_or_path, overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_image_size(config: ModelConfig) -> int:
    """The square input resolution a model of either family expects."""
    return config.image.image_size if isinstance(config, DualEncoderConfig) else config.image_size


def image_size(model: nn.Module) -> int:
    return config_image_size(model.config)
