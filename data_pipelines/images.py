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


def decode_image(source: str | Path | bytes, max_pixels: int | None = None, name: str = "") -> Image.Image:
    """Open, fully decode and convert an image to RGB.

    Pillow's `Image.MAX_IMAGE_PIXELS` guard only warns between 1x and 2x the limit, so the warning is made
    an error here: a decompression bomb is refused, not half-loaded. `max_pixels` overrides the limit.
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
                im.load()
                return im.convert("RGB")
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage("missing image", f"{name}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("too many pixels", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        # Pillow reports truncated files as OSError and some malformed headers as SyntaxError/ValueError.
        raise BadImage("corrupt image", f"{name}: {e}") from None
