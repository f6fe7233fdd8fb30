"""An image file's format read from its bytes, never from its name: what a stored copy is called and served as.

Shards, index copies and uploads keep the original bytes (EXIF, 16-bit samples and the compression survive);
only their extension and media type come from here. A `.jpg` that holds a PNG is stored as `.png`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Pillow's format name -> (extension, media type). MPO is a phone's JPEG with a second frame: still a JPEG.
FORMATS = {
    "JPEG": ("jpg", "image/jpeg"), "MPO": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"), "GIF": ("gif", "image/gif"), "BMP": ("bmp", "image/bmp"),
    "TIFF": ("tiff", "image/tiff"),
}
# What every current browser draws in an <img>; anything else gets a derived PNG preview.
BROWSER_EXTENSIONS = frozenset({"jpg", "png", "webp", "gif", "bmp"})
STORED_EXTENSIONS = tuple(sorted({ext for ext, _ in FORMATS.values()}))


@dataclass(frozen=True)
class ImageFormat:
    name: str  # Pillow's, e.g. "JPEG"
    extension: str  # without the dot, e.g. "jpg"
    media_type: str  # e.g. "image/jpeg"

    @property
    def browser_shows(self) -> bool:
        return self.extension in BROWSER_EXTENSIONS


def sniff_format(data: bytes | str | Path) -> ImageFormat:
    """The format of image bytes (or of a file, by its bytes); only the header is read, nothing is decoded.

    Raises ValueError for bytes Pillow does not recognise as an image."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # decoding is checked elsewhere
            with Image.open(source) as im:
                name = im.format or ""
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        where = "image bytes" if isinstance(data, bytes) else str(data)
        raise ValueError(f"{where}: not an image file Pillow recognises ({type(e).__name__})") from None
    if name in FORMATS:
        return ImageFormat(name, *FORMATS[name])
    extension = next((ext.lstrip(".") for ext, fmt in Image.registered_extensions().items() if fmt == name), "bin")
    return ImageFormat(name, extension, Image.MIME.get(name, "application/octet-stream"))
