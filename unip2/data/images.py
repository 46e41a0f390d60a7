"""Encoded image bytes: read a file, check that it fully decodes, decode to RGB.

A failed check returns a *reason* instead of raising, so converters skip and count bad images:
``missing_file``, ``empty_file``, ``truncated``, ``undecodable``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of checking encoded bytes: the size when they decode, else ``reason``."""

    width: int = 0
    height: int = 0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    """The file's bytes, or (None, "missing_file") when it is not a readable file."""
    try:
        return Path(path).read_bytes(), None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None, "missing_file"


def check_image(data: bytes) -> ImageCheck:
    """Decode every pixel once (header checks miss truncation) and report the size or why it failed."""
    if not data:
        return ImageCheck(reason="empty_file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return ImageCheck(width=image.width, height=image.height)
    except UnidentifiedImageError:
        return ImageCheck(reason="undecodable")
    except OSError as error:
        # Pillow signals a stream that ends early with "image file is truncated" / "truncated".
        return ImageCheck(reason="truncated" if "truncated" in str(error).lower() else "undecodable")
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return ImageCheck(reason="undecodable")


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB (grey, palette and CMYK images are converted)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
