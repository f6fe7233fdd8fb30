"""The shapes world: procedural scenes with captions, VQA, classes and hard negatives (no download)."""

from data_pipelines.shapes.world import SPLITS, ShapesConfig, ShapesWorld, generate_shapes_world

__all__ = ["SPLITS", "ShapesConfig", "ShapesWorld", "generate_shapes_world"]
