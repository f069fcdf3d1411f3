"""Stored images that Pillow alone decodes wrongly (or cannot save as PNG), for the tests of every
place that turns a stored image into RGB pixels: each must see them as `decode_image` does."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def stored(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def awkward_images() -> dict[str, bytes]:
    """The stored bytes of one image of each kind, by name."""
    clear = np.zeros((8, 8, 4), np.uint8)
    clear[..., 0] = 200  # red under full transparency: not part of the picture
    clear[:4, :, 3] = 255  # the top half opaque red
    palette = Image.fromarray(clear, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 7))
    wide = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    return {
        "dark 16-bit": stored(Image.fromarray(np.full((8, 8), 200, np.uint16))),  # 200 of 65535: near black
        "bright 16-bit": stored(Image.fromarray(np.full((8, 8), 60000, np.uint16))),
        "alpha": stored(Image.fromarray(clear, "RGBA")),
        "palette with transparency": stored(palette),
        "CMYK": stored(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"),
        "EXIF-rotated": stored(wide, "JPEG", exif=exif),
    }
