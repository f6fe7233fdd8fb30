"""Drawing shapes-world scenes with Pillow.

Shapes are drawn at SUPERSAMPLE x the target size and box-filtered down: ImageDraw has no anti-aliasing,
and jagged 5-pixel circles at 64 px look too much like diamonds.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from data_pipelines.shapes.scene import COLORS, ShapeObject

BACKGROUND = (48, 48, 52)
SUPERSAMPLE = 4


def render_scene(objects: list[ShapeObject], image_size: int) -> Image.Image:
    size = image_size * SUPERSAMPLE
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw_shape(draw, obj.shape, obj.x * size, obj.y * size, obj.radius * size, COLORS[obj.color])
    return image.reduce(SUPERSAMPLE)  # box average, faster than resize(BOX) for an integer factor


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.85  # roughly the circle's area, so size words mean the same for every shape
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        points = [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6,
                                                                           11 * math.pi / 6)]
        draw.polygon(points, fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        t = r * 0.36
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
