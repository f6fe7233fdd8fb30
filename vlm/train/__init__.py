"""Training for both families: `train(config, out_dir)`, the same under torchrun."""

from vlm.lazy import lazy_attributes

__getattr__ = lazy_attributes(globals(), {
    "DataConfig": "vlm.train.config", "TrainConfig": "vlm.train.config", "Trainer": "vlm.train.trainer",
    "TrainingError": "vlm.train.trainer", "load_train_config": "vlm.train.config", "train": "vlm.train.run",
})
