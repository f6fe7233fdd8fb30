"""Training for both families: `train(config, out_dir)`, the same under torchrun."""

from vlm.train.config import DataConfig, TrainConfig, load_train_config
from vlm.train.run import train
from vlm.train.trainer import Trainer, TrainingError

__all__ = ["DataConfig", "TrainConfig", "Trainer", "TrainingError", "load_train_config", "train"]
