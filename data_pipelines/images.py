"""Image decoding with the failure modes of real datasets turned into one exception with a reason."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class BadImage(Exception):
    """An image that cannot be used; `reason` is the short label it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(source: str | Path | bytes, max_pixels: int | None = None, name: str = "",
                 min_size: int | None = None) -> Image.Image:
    """Open, fully decode and convert an image to RGB.

    Pillow's `Image.MAX_IMAGE_PIXELS` guard only warns between 1x and 2x the limit, so the warning is made
    an error here: a decompression bomb is refused, not half-loaded. `max_pixels` overrides the limit.
    `min_size`: a JPEG at least twice that size on both sides is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    (`Image.draft`), never below `min_size` on either side: a 640x480 photo for a 224 px model decodes
    at 320x240, several times faster, and the transform then resizes less.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fp = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(fp) as im:
                if limit and im.width * im.height > limit:
                    raise BadImage("too many pixels", f"{name}: {im.width}x{im.height} is over {limit} pixels "
                                   "(possible decompression bomb)")
                if min_size and im.format == "JPEG":
                    im.draft("RGB", (min_size, min_size))
                im.load()
                return im.convert("RGB")
    except FileNotFoundError:
        raise BadImage("missing image", f"{name}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("too many pixels", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        # Pillow reports truncated files as OSError and some malformed headers as SyntaxError/ValueError.
        raise BadImage("corrupt image", f"{name}: {e}") from None
