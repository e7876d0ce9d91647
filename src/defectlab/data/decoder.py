"""The one image decoder of defectlab: training, evaluation and serving read images through it.

An `ImageDecoder` turns a file or encoded bytes (PNG, JPEG, BMP, TIFF) into a
``uint8`` array ``(image_size, image_size, channels)``: converted to RGB (or
``L`` for grayscale), then resized with ``resampling``. Its settings are
written into every detector bundle (``detector.json``, key
``preprocessing``) and read back by serving, so a served image is decoded
exactly as the training images were.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from defectlab.errors import DefectlabError

# ~6300 x 6300: well above MVTec's 1024 px, far below a memory bomb.
MAX_INPUT_PIXELS = 40_000_000
RESAMPLING_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageDecodeError(DefectlabError, ValueError):
    """An image cannot be decoded; the message says why (the caller names the file or row)."""


@dataclass(frozen=True)
class ImageDecoder:
    """Decoding settings: output size, colour mode and resampling filter.

    Parameters
    ----------
    image_size : int
        Output height and width in pixels.
    grayscale : bool
        One channel (``L``) instead of three (RGB).
    resampling : str
        Pillow filter used to resize: one of `RESAMPLING_FILTERS`.
    """

    image_size: int
    grayscale: bool = False
    resampling: str = "bilinear"

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.resampling not in RESAMPLING_FILTERS:
            raise ValueError(
                f"resampling must be one of {', '.join(RESAMPLING_FILTERS)}, got {self.resampling!r}"
            )

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def empty_batch(self, count: int = 0) -> np.ndarray:
        """A zero ``uint8`` batch ``(count, size, size, channels)``."""
        return np.zeros((count, self.image_size, self.image_size, self.channels), dtype=np.uint8)

    def decode(self, source: bytes | str | os.PathLike) -> np.ndarray:
        """Decode a file path or encoded bytes; raises `ImageDecodeError` saying why it cannot."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                raise ImageDecodeError("the image is empty (0 bytes)")
            opened = io.BytesIO(bytes(source))
        else:
            opened = Path(source)
        try:
            with Image.open(opened) as image:
                width, height = image.size
                if width * height > MAX_INPUT_PIXELS:
                    raise ImageDecodeError(
                        f"the image is {width}x{height} pixels, more than the {MAX_INPUT_PIXELS} "
                        "pixels a detector accepts; resize it first"
                    )
                image.load()
                image = image.convert("L" if self.grayscale else "RGB")
                if image.size != (self.image_size, self.image_size):
                    image = image.resize(
                        (self.image_size, self.image_size), RESAMPLING_FILTERS[self.resampling]
                    )
                array = np.asarray(image, dtype=np.uint8)
        except ImageDecodeError:
            raise
        except Image.DecompressionBombError as error:
            # Pillow refuses far larger images (over ~179 M pixels) already in Image.open,
            # before the size check above can see them.
            raise ImageDecodeError(
                f"the image is too large ({error}); at most {MAX_INPUT_PIXELS} pixels are "
                "accepted, resize it first"
            ) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageDecodeError(f"not a readable PNG/JPEG image ({error})") from None
        return array[..., np.newaxis] if self.grayscale else array

    def to_dict(self) -> dict:
        """The settings as JSON-able values (written into detector bundles)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: dict) -> "ImageDecoder":
        return cls(
            image_size=int(settings["image_size"]),
            grayscale=bool(settings["grayscale"]),
            resampling=str(settings.get("resampling", "bilinear")),
        )
