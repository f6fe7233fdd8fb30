"""The one image decoder every command uses (training, evaluation, classify, index build, serve, shards,
inspect), with the failure modes of real datasets turned into one exception with a reason.

What a decoded image is (`decode_image`, and `to_rgb` for an image already open):
- EXIF orientation applied (`ImageOps.exif_transpose`): a portrait phone photo is seen upright.
- 16-bit and float modes scaled to 8 bits by their range, not clipped (see `scaled_to_8bit`).
- Transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) composited onto white, `BACKGROUND`,
  as a browser shows a transparent PNG on a plain page.
- Everything else (CMYK, palette, 1-bit, YCbCr, ...) converted to RGB by Pillow; animated and multi-page
  files give their first frame.

The pixel limit (`max_pixels`) is one number for the process, Pillow's own `Image.MAX_IMAGE_PIXELS`:
`set_max_pixels` sets it (every command's `--max-pixels`, the recipe key `data.max_pixels`), so Pillow's
decompression-bomb check follows it up and down.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BACKGROUND = (255, 255, 255)  # what transparent pixels become: white, as browsers show them
TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
LIMIT_HINT = "raise it with --max-pixels N or the recipe key data.max_pixels"


class BadImage(Exception):
    """An image that cannot be used; `reason` is the short label it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def set_max_pixels(limit: int) -> None:
    """The process's pixel limit, Pillow's `Image.MAX_IMAGE_PIXELS` included, so that no decoder in the
    process (ours, Pillow's bomb check, a library's) refuses at another limit. Up or down."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"max_pixels: expected a positive whole number, got {limit!r}")
    Image.MAX_IMAGE_PIXELS = limit


@contextlib.contextmanager
def max_pixels_set(limit: int | None) -> Iterator[None]:
    """`set_max_pixels(limit)` for the block (a command's run), then the limit before it; None: unchanged."""
    if limit is None:
        yield
        return
    before = Image.MAX_IMAGE_PIXELS
    set_max_pixels(limit)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def current_max_pixels() -> int:
    """The process's pixel limit (Pillow's default, 89,478,485, until `set_max_pixels`)."""
    return Image.MAX_IMAGE_PIXELS or 0


def allow_pixels(limit: int) -> None:
    """Raise Pillow's limit to `limit` when it is lower, never lower it: Pillow refuses an image over twice its
    own limit inside `Image.open`, before a caller's larger per-call limit could be checked."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def too_many_pixels(name: str, what: str, limit: int) -> BadImage:
    """One limit, and how to change it (Pillow's own message states twice its limit as well)."""
    return BadImage("too many pixels", f"{name}: {what} is over the limit of {limit:,} pixels "
                    f"(a guard against decompression bombs; {LIMIT_HINT})")


def _pillow_pixels(error: Exception) -> str:
    """The pixel count Pillow's bomb error names (it gives no width and height)."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found.group(1)):,} pixels" if found else "the image"


def decode_image(source: str | Path | bytes, max_pixels: int | None = None, name: str = "",
                 min_size: int | None = None) -> Image.Image:
    """Open, fully decode and convert an image to RGB by the rules of the module docstring.

    `max_pixels`: refuse images over this many pixels, checked on the header before decoding (default: the
    process's limit, `current_max_pixels()`); a decompression bomb is refused, not half-loaded.
    `min_size`: a JPEG at least twice that size on both sides is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    (`Image.draft`), never below `min_size` on either side: a 640x480 photo for a 224 px model decodes
    at 320x240, several times faster, and the transform then resizes less.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    limit = current_max_pixels() if max_pixels is None else max_pixels
    allow_pixels(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked below, exactly
            fp = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(fp) as im:
                if limit and im.width * im.height > limit:
                    raise too_many_pixels(name, f"{im.width}x{im.height} = {im.width * im.height:,} pixels", limit)
                if min_size and im.format == "JPEG":
                    im.draft("RGB", (min_size, min_size))
                im.load()
                image = to_rgb(im)
                return im.copy() if image is im else image  # `im` is closed on leaving the block
    except FileNotFoundError:
        raise BadImage("missing image", f"{name}: no such file") from None
    except Image.DecompressionBombError as e:  # over twice Pillow's limit (>= `limit`): refused inside open()
        raise too_many_pixels(name, _pillow_pixels(e), limit) from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        # Pillow reports truncated files as OSError and some malformed headers as SyntaxError/ValueError.
        raise BadImage("corrupt image", f"{name}: {e}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """An open image as the RGB image a model sees (the module docstring's rules); `image` itself when it is
    already upright RGB, so the common case costs no copy."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode.startswith(("I", "F")):
        return _high_depth_to_rgb(image)
    if image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        return composite(image.convert("RGBA"))
    return image.convert("RGB")


def composite(rgba: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """RGBA onto an opaque background (white by default): what a browser shows."""
    out = Image.new("RGB", rgba.size, background)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greys to 8-bit RGB; a transparent grey value becomes the background."""
    values = np.asarray(image)
    grey = Image.fromarray(scaled_to_8bit(values, image.mode), "L")
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return grey.convert("RGB")
    alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8), "L")
    return composite(Image.merge("RGBA", (grey, grey, grey, alpha)))


def scaled_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """uint8 greys from 16-bit, integer or float values, scaled by their range, never clipped.

    The range: 0..65535 for the 16-bit modes (I;16, I;16B, ...). For I (32-bit integer) and F (float), the
    smallest usual full scale that holds every value: 0..1 (F only), 0..255, 0..65535; otherwise the image's
    own min..max (negative or larger values, say a depth map)."""
    values = values.astype(np.float64)
    low, high = 0.0, 65535.0
    if not mode.startswith("I;16") and values.size:
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        scales = ((1.0,) if mode.startswith("F") else ()) + (255.0, 65535.0)
        fits = [s for s in scales if lo >= 0 and hi <= s]
        low, high = (0.0, fits[0]) if fits else (lo, max(hi, lo + 1e-12))
    scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
