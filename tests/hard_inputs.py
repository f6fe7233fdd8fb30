"""Hard but ordinary inputs, generated on demand (nothing is downloaded or checked in): what users' real files
look like. Import the writers from any test: `from hard_inputs import write_mode_files, write_bom_csv`.

Images (each writer takes a folder and returns what it wrote, keyed by name):
- `write_mode_files`: every Pillow mode, 1, L, LA, P (with a transparent index), RGB, RGBA, CMYK, I;16, I, F,
  each drawn from one picture (`reference`) so that all should decode to about the same RGB (`expected_rgb`).
- `write_format_files`: PNG, JPEG, WebP, TIFF, animated GIF, BMP.
- `write_exif_orientations`: JPEGs carrying EXIF Orientation 2..8 (the pixels stored sideways or flipped).
- `write_16bit_grey` / `write_float_grey`: a 16-bit PNG and a float TIFF whose mean is a known fraction of
  full scale.
- `write_strips`: 1 pixel wide, 1 pixel tall, and 4000x10.
- `write_latin1_name`: an image whose file name is Latin-1 bytes (not UTF-8), made with `os.open(bytes)`.

Pairs files (CSV/TSV with `image` and `caption` columns, each beside the small PNG `a.png` it lists; every writer
takes `folder` and `rows` and returns the file's path):
- `write_bom_csv`: UTF-8 with a byte-order mark (Excel's "CSV UTF-8").
- `write_crlf_csv`: Windows line ends, and a quoted caption with a newline inside.
- `write_semicolon_csv`: `;` between columns (Excel in locales with a decimal comma).
- `write_unbalanced_quote_tsv`: an OpenCLIP-style TSV (`filepath`, `title`) where row 3's caption opens a quote
  it never closes, so a CSV reader swallows the rows after it.
- `write_huge_field_csv`: one caption of 200,000 characters (over the csv module's default 131,072 limit).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (48, 32)  # (width, height): not square, so a rotation shows in the shape
ALL_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
TRANSPARENT_MODES = ("LA", "P", "RGBA")  # the left quarter of these is fully transparent
WHITE = (255, 255, 255)
GREY_MEAN = 115 / 255  # the 16-bit and float greys' mean, as a fraction of full scale


def reference(size: tuple[int, int] = SIZE) -> Image.Image:
    """An RGB picture with no symmetry: a red-green gradient across, blue rising down, a dark top-left mark."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    pixels = np.stack([255 * x, 255 * (1 - x), 60 + 150 * y], axis=-1)
    pixels[: max(1, h // 4), : max(1, w // 4)] = (10, 20, 30)
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def grey_reference(size: tuple[int, int] = SIZE) -> np.ndarray:
    """The reference's luminance, float in 0..1, (h, w)."""
    return np.asarray(reference(size).convert("L"), dtype=np.float64) / 255


def transparent_columns(size: tuple[int, int] = SIZE) -> slice:
    return slice(0, size[0] // 4)


def mode_image(mode: str, size: tuple[int, int] = SIZE) -> Image.Image:
    """The reference in `mode`; LA, P and RGBA with their left quarter transparent."""
    rgb, grey = reference(size), grey_reference(size)
    alpha = np.full((size[1], size[0]), 255, np.uint8)
    alpha[:, transparent_columns(size)] = 0
    if mode == "I;16":
        return Image.fromarray((grey * 65535).round().astype(np.uint16))
    if mode == "I":
        return Image.fromarray((grey * 65535).round().astype(np.int32))
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32))
    if mode in ("LA", "RGBA"):
        image = rgb.convert(mode)
        image.putalpha(Image.fromarray(alpha, "L"))
        return image
    if mode == "P":  # palette index 0 is the transparent one, as in most GIFs and PNGs
        quantized = rgb.quantize(255)
        indices = np.asarray(quantized).astype(np.uint8) + 1
        indices[alpha == 0] = 0
        image = Image.fromarray(indices, "P")
        image.putpalette([0, 0, 0, *quantized.getpalette()[: 255 * 3]])
        image.info["transparency"] = 0
        return image
    return rgb.convert(mode)


def expected_rgb(mode: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    """What a decoder should give for `mode_image(mode)`: (h, w, 3) uint8, transparency shown on white."""
    if mode in ("L", "LA", "I;16", "I", "F"):
        out = np.repeat((grey_reference(size) * 255).round()[..., None], 3, axis=-1)
    elif mode == "1":
        out = np.asarray(reference(size).convert("1").convert("RGB"), dtype=np.float64)
    else:
        out = np.asarray(reference(size), dtype=np.float64)
    if mode in TRANSPARENT_MODES:
        out[:, transparent_columns(size)] = WHITE
    return out.astype(np.uint8)


def mode_file_format(mode: str) -> str:
    """A format that stores `mode` as it is: PNG where it can, else TIFF (CMYK, 32-bit integer, float)."""
    return "TIFF" if mode in ("CMYK", "I", "F") else "PNG"


def write_mode_files(folder: Path, size: tuple[int, int] = SIZE) -> dict[str, Path]:
    """`<mode>.png|tif` for every mode in `ALL_MODES`; the file reopens in the same mode."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for mode in ALL_MODES:
        fmt = mode_file_format(mode)
        path = folder / f"{mode.replace(';', '_')}.{'tif' if fmt == 'TIFF' else 'png'}"
        image = mode_image(mode, size)
        image.save(path, fmt, **({"transparency": 0} if mode == "P" else {}))
        files[mode] = path
    return files


def write_format_files(folder: Path, size: tuple[int, int] = SIZE) -> dict[str, Path]:
    """The reference as PNG, JPEG, WebP, TIFF, BMP and a 3-frame animated GIF (its first frame the reference)."""
    folder.mkdir(parents=True, exist_ok=True)
    image, files = reference(size), {}
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")):
        files[fmt] = folder / f"picture.{ext}"
        image.save(files[fmt], fmt)
    frames = [image, image.rotate(180), Image.new("RGB", size, (0, 0, 255))]
    files["GIF"] = folder / "animated.gif"
    frames[0].save(files["GIF"], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return files


def write_exif_orientations(folder: Path, size: tuple[int, int] = SIZE) -> dict[int, Path]:
    """`orientation_<k>.jpg` for k in 2..8: the reference's pixels with EXIF Orientation k (a phone's portrait
    photo is orientation 6: stored sideways, to be turned on display)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for k in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = k  # Orientation
        files[k] = folder / f"orientation_{k}.jpg"
        reference(size).save(files[k], "JPEG", quality=95, exif=exif.tobytes())
    return files


def grey_with_mean(size: tuple[int, int], mean: float) -> np.ndarray:
    """A horizontal ramp in 0..1 whose mean is `mean` (0 < mean < 1)."""
    ramp = np.linspace(0, 1, size[0]) ** ((1 - mean) / mean)  # x^p has mean 1 / (p + 1)
    return np.broadcast_to(ramp, (size[1], size[0])).copy()


def write_16bit_grey(path: Path, size: tuple[int, int] = (64, 16), mean: float = GREY_MEAN) -> Path:
    """A 16-bit greyscale PNG (mode I;16) whose mean is `mean` of full scale (65535)."""
    Image.fromarray((grey_with_mean(size, mean) * 65535).round().astype(np.uint16)).save(path, "PNG")
    return path


def write_float_grey(path: Path, size: tuple[int, int] = (64, 16), mean: float = GREY_MEAN) -> Path:
    """A float TIFF (mode F) with values in 0..1 whose mean is `mean`."""
    Image.fromarray(grey_with_mean(size, mean).astype(np.float32)).save(path, "TIFF")
    return path


def write_strips(folder: Path) -> dict[str, Path]:
    """`1x200.png` (1 pixel wide), `200x1.png` (1 pixel tall) and `4000x10.png`: width x height."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for w, h in ((1, 200), (200, 1), (4000, 10)):
        files[f"{w}x{h}"] = folder / f"{w}x{h}.png"
        reference((w, h)).save(files[f"{w}x{h}"])
    return files


def write_latin1_name(folder: Path, stem: bytes = b"caf\xe9 cr\xe8me") -> Path:
    """A PNG named in Latin-1 bytes (`café crème` as Windows-1252 would write it); the returned Path holds the
    name as Python decodes it (`os.fsdecode`, surrogate escapes on a UTF-8 system)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = os.fsencode(folder) + b"/" + stem + b".png"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        reference().save(f, "PNG")
    return Path(os.fsdecode(name))


# --- pairs files ------------------------------------------------------------------------------------------------


def _listed_image(folder: Path) -> str:
    """The small PNG every pairs file lists (`a.png`, beside the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "a.png").exists():
        reference().save(folder / "a.png")
    return "a.png"


def write_bom_csv(folder: Path, rows: int = 5) -> Path:
    """`bom.csv`: `image,caption`, UTF-8 with a BOM before the header."""
    image = _listed_image(folder)
    lines = ["image,caption", *(f"{image},a photo number {i}" for i in range(rows))]
    path = folder / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    return path


def write_crlf_csv(folder: Path, rows: int = 5) -> Path:
    """`crlf.csv`: CRLF line ends; row 1's quoted caption holds a newline (`"two\\r\\nlines"`)."""
    image = _listed_image(folder)
    lines = ["image,caption", *(f"{image},caption {i}" if i != 1 else f'{image},"two\r\nlines"' for i in range(rows))]
    path = folder / "crlf.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def write_semicolon_csv(folder: Path, rows: int = 5) -> Path:
    """`semicolon.csv`: `image;caption`, captions with commas in them (`red, round`)."""
    image = _listed_image(folder)
    lines = ["image;caption", *(f"{image};red, round, number {i}" for i in range(rows))]
    path = folder / "semicolon.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_unbalanced_quote_tsv(folder: Path, rows: int = 200, bad_row: int = 3) -> Path:
    """`quote.tsv`: OpenCLIP's `filepath<TAB>title`; row `bad_row` (0-based) starts its title with a `"` that never
    closes, so a csv reader takes every later line into that one field."""
    image = _listed_image(folder)
    titles = [f"title {i}" for i in range(rows)]
    titles[bad_row] = '"a quote that never ends'
    lines = ["filepath\ttitle", *(f"{image}\t{title}" for title in titles)]
    path = folder / "quote.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_huge_field_csv(folder: Path, rows: int = 3, length: int = 200_000) -> Path:
    """`huge.csv`: row 1's caption is `length` characters (a pasted article), the others are short."""
    image = _listed_image(folder)
    lines = ["image,caption", *(f"{image},{'x' * length if i == 1 else f'caption {i}'}" for i in range(rows))]
    path = folder / "huge.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
