"""Drawing shapes-world scenes with Pillow.

Shapes are drawn at SUPERSAMPLE x the target size and box-filtered down: ImageDraw has no anti-aliasing,
and jagged 5-pixel circles at 64 px look too much like diamonds.
"""

from __future__ import annotations

import math
import zlib

from PIL import Image, ImageDraw

from data_pipelines.shapes.scene import COLORS, ShapeObject

BACKGROUND = (48, 48, 52)
SUPERSAMPLE = 4
# Another look for the same scene grammar (`vlm data shapes --style`): a shifted domain to adapt a model to.
# outline: shapes drawn as thick outlines, in darker shades, on a light textured background.
# pastel: filled shapes in pale shades on a light background.
STYLES = ("default", "outline", "pastel")


def style_color(color: str, style: str) -> tuple[int, int, int]:
    r, g, b = COLORS[color]
    if style == "outline":
        return (int(r * 0.8), int(g * 0.8), int(b * 0.8)) if color != "white" else (250, 250, 250)
    if style == "pastel":
        return (int(r * 0.6 + 100), int(g * 0.6 + 100), int(b * 0.6 + 100))
    return (r, g, b)


def render_scene(objects: list[ShapeObject], image_size: int, style: str = "default") -> Image.Image:
    size = image_size * SUPERSAMPLE
    image = Image.new("RGB", (size, size), BACKGROUND) if style == "default" else _background(objects, size, style)
    background = image.copy()
    draw = ImageDraw.Draw(image)
    for obj in objects:
        cx, cy, r = obj.x * size, obj.y * size, obj.radius * size
        _draw_shape(draw, obj.shape, cx, cy, r, style_color(obj.color, style))
        if style == "outline":  # the outline is the shape minus its shrunken interior, refilled with background
            hole = Image.new("L", image.size, 0)
            _draw_shape(ImageDraw.Draw(hole), obj.shape, cx, cy, r * 0.6, 255)
            image.paste(background, mask=hole)
    return image.reduce(SUPERSAMPLE)  # box average, faster than resize(BOX) for an integer factor


def _background(objects: list[ShapeObject], size: int, style: str) -> Image.Image:
    """A light background; `outline` adds diagonal stripes and noise, seeded by the scene so it is reproducible."""
    if style not in STYLES:
        raise ValueError(f"unknown shapes style {style!r}; choose from {', '.join(STYLES)}")
    if style == "pastel":
        return Image.new("RGB", (size, size), (225, 222, 215))
    import numpy as np  # here, so `vlm --help` (which imports this module's package) stays light

    seed = zlib.crc32(repr(objects).encode())
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    stripes = ((x + y + seed % 16) // (size // 8) % 2) * 18.0
    pixels = 190 + stripes[..., None] + rng.normal(0, 10, (size, size, 1)) + np.array([8.0, 0.0, -10.0])
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
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
