"""Loaded by the schemathesis run in test_serve_fuzz.py (SCHEMATHESIS_HOOKS): base64 strings that are images.

The schema declares image fields as `format: byte` (base64). Random base64 is almost never an image, so the
fuzzer's requests would stop at the 400 `not_an_image`; this strategy makes most of them real images of odd
sizes, modes and formats (and keeps some random bytes), so they reach decoding, the model and the index.
"""

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {"PNG": ("RGB", "RGBA", "L", "1", "P", "I;16", "LA"), "JPEG": ("RGB", "L", "CMYK"), "GIF": ("P", "L"),
           "BMP": ("RGB", "L", "1", "P"), "WEBP": ("RGB", "RGBA")}


@st.composite
def image_files(draw) -> bytes:
    image_format = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[image_format]))
    size = (draw(st.integers(1, 80)), draw(st.integers(1, 80)))
    image = Image.new(mode, size, draw(st.integers(0, 255)) if mode not in ("RGB", "RGBA", "CMYK") else None)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    data = buffer.getvalue()
    if draw(st.integers(0, 9)) == 0:  # now and then a truncated file
        data = data[: draw(st.integers(0, len(data)))]
    return data


base64_images = st.one_of(image_files(), image_files(), image_files(), st.binary(max_size=64)).map(
    lambda data: base64.b64encode(data).decode("ascii"))
schemathesis.openapi.format("byte", base64_images)
