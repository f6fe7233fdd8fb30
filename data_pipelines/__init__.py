"""Data pipelines: every dataset format read into one Sample type, transforms, batching, the shapes world.

See docs/INTERFACES.md (Data) for the contract the trainer, the evaluators and the service rely on.
The names below load on first use, so the CLI's argument parsers import no torch.
"""

from vlm.lazy import lazy_attributes

__getattr__ = lazy_attributes(globals(), {
    "BadImage": "data_pipelines.images", "Collator": "data_pipelines.collate",
    "IMAGE_MEAN": "data_pipelines.transforms", "IMAGE_STD": "data_pipelines.transforms",
    "RecordDataset": "data_pipelines.records", "Sample": "data_pipelines.sample",
    "ShapesConfig": "data_pipelines.shapes", "ShapesWorld": "data_pipelines.shapes",
    "ShardDataset": "data_pipelines.shards", "SkipStats": "data_pipelines.sample",
    "TooManyBadSamples": "data_pipelines.sample", "answer_targets": "data_pipelines.vqa",
    "build_answer_vocab": "data_pipelines.vqa", "decode_image": "data_pipelines.images",
    "detect_format": "data_pipelines.sources", "eval_transform": "data_pipelines.transforms",
    "generate_shapes_world": "data_pipelines.shapes", "normalize_answer": "data_pipelines.vqa",
    "open_shapes": "data_pipelines.sources", "open_source": "data_pipelines.sources",
    "source_options": "data_pipelines.sources", "train_transform": "data_pipelines.transforms",
    "write_shards": "data_pipelines.shards",
})
