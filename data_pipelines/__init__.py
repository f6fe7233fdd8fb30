"""Data pipelines: every dataset format read into one Sample type, transforms, batching, the shapes world.

See docs/INTERFACES.md (Data) for the contract the trainer, the evaluators and the service rely on.
"""

from data_pipelines.collate import Collator
from data_pipelines.images import BadImage, decode_image
from data_pipelines.records import RecordDataset
from data_pipelines.sample import Sample, SkipStats, TooManyBadSamples
from data_pipelines.shapes import ShapesConfig, ShapesWorld, generate_shapes_world
from data_pipelines.shards import ShardDataset, write_shards
from data_pipelines.sources import detect_format, open_shapes, open_source
from data_pipelines.transforms import IMAGE_MEAN, IMAGE_STD, eval_transform, train_transform
from data_pipelines.vqa import answer_targets, build_answer_vocab, normalize_answer

__all__ = [
    "BadImage", "Collator", "IMAGE_MEAN", "IMAGE_STD", "RecordDataset", "Sample", "ShapesConfig", "ShapesWorld",
    "ShardDataset", "SkipStats", "TooManyBadSamples", "answer_targets", "build_answer_vocab", "decode_image",
    "detect_format", "eval_transform", "generate_shapes_world", "normalize_answer", "open_shapes", "open_source",
    "train_transform", "write_shards",
]
