"""The one image decoder of defectlab: training, evaluation and serving read images through it.

An `ImageDecoder` turns a file or encoded bytes (PNG, JPEG, BMP, TIFF) into a
``uint8`` array ``(image_size, image_size, channels)``, in this order:

1. **upright**: the EXIF orientation of photos from phones and cameras is applied;
2. **8 bits**: 16-bit integer images (PNG/TIFF ``I;16``, industrial cameras) are
   scaled from their full range ``0..65535`` to ``0..255`` (``round(v * 255 / 65535)``,
   so a 16-bit image made from an 8-bit one as ``v * 257`` decodes to exactly that
   8-bit image); 32-bit integer images must hold values in ``0..65535`` and are read
   the same way; float images must hold intensities in ``[0, 1]`` and are scaled by
   255. Anything else is refused with the range found, never saturated or
   stretched per image (a per-image stretch would hide a uniformly dark defect);
3. **colour**: converted to RGB (or ``L`` for grayscale);
4. **square** (``resize``): ``stretch`` to ``image_size x image_size`` (the default,
   MVTec AD images are square), ``center_crop`` (the largest centred square, then
   resized) or ``pad`` (resized so the longer side is ``image_size``, centred on
   black), resampled with ``resampling``.

Ground-truth masks go through the same orientation and geometry (`decode_mask`), so
a mask stays on its defect whatever ``resize`` is. The settings are written into
every detector bundle (``detector.json``, key ``preprocessing``) and read back by
serving, so a served image is decoded exactly as the training images were.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from defectlab.errors import DefectlabError

# ~6300 x 6300: well above MVTec's 1024 px, far below a memory bomb.
MAX_INPUT_PIXELS = 40_000_000
# The smallest side a detector accepts: a smaller image (a 1 x 1 thumbnail, a stray icon)
# holds nothing to find a defect in once stretched to the run's size.
MIN_INPUT_SIDE = 8
RESAMPLING_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
RESIZE_MODES = ("stretch", "center_crop", "pad")
# What loading a dataset does with a file the decoder cannot read: stop naming it, or leave it out.
BAD_IMAGE_POLICIES = ("error", "skip")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
EXIF_ORIENTATION_TAG = 0x0112


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
    resize : str
        How a non-square image becomes square: one of `RESIZE_MODES` (module docstring).
    """

    image_size: int
    grayscale: bool = False
    resampling: str = "bilinear"
    resize: str = "stretch"

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.resampling not in RESAMPLING_FILTERS:
            raise ValueError(
                f"resampling must be one of {', '.join(RESAMPLING_FILTERS)}, got {self.resampling!r}"
            )
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def empty_batch(self, count: int = 0) -> np.ndarray:
        """A zero ``uint8`` batch ``(count, size, size, channels)``."""
        return np.zeros((count, self.image_size, self.image_size, self.channels), dtype=np.uint8)

    def decode(self, source: bytes | str | os.PathLike) -> np.ndarray:
        """Decode a file path or encoded bytes; raises `ImageDecodeError` saying why it cannot."""
        with _opened_upright(source) as image:
            image = _eight_bit(image).convert("L" if self.grayscale else "RGB")
            image = square_image(image, self.image_size, self.resize, RESAMPLING_FILTERS[self.resampling])
            array = np.asarray(image, dtype=np.uint8)
        return array[..., np.newaxis] if self.grayscale else array

    def decode_mask(self, source: bytes | str | os.PathLike) -> np.ndarray:
        """A ground-truth mask (non-zero = defect) in this decoder's geometry: ``bool (size, size)``.

        Nearest-neighbour resampling and zero (good) padding, so no mask value is invented.
        """
        with _opened_upright(source) as mask:
            mask = _eight_bit(mask).convert("L")
            mask = square_image(mask, self.image_size, self.resize, Image.Resampling.NEAREST)
            return np.asarray(mask, dtype=np.uint8) > 127

    def to_dict(self) -> dict:
        """The settings as JSON-able values (written into detector bundles)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: dict) -> "ImageDecoder":
        return cls(
            image_size=int(settings["image_size"]),
            grayscale=bool(settings["grayscale"]),
            resampling=str(settings.get("resampling", "bilinear")),
            # Bundles written before `resize` existed were all stretched.
            resize=str(settings.get("resize", "stretch")),
        )


def upright_size(source: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as it is shown (EXIF orientation applied); reads the header only."""
    try:
        with Image.open(Path(source)) as image:
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION_TAG, 1) in (5, 6, 7, 8):  # the quarter turns
                return height, width
            return width, height
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"not a readable PNG/JPEG image ({error})") from None


def square_image(image: Image.Image, size: int, resize: str, resampling) -> Image.Image:
    """``image`` as ``size x size`` by the ``resize`` mode of `RESIZE_MODES` (module docstring)."""
    width, height = image.size
    if resize == "center_crop" and width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    elif resize == "pad" and width != height:
        longer = max(width, height)
        scaled = (max(1, round(width * size / longer)), max(1, round(height * size / longer)))
        canvas = Image.new(image.mode, (size, size), 0)
        canvas.paste(image.resize(scaled, resampling), ((size - scaled[0]) // 2, (size - scaled[1]) // 2))
        return canvas
    if image.size != (size, size):
        image = image.resize((size, size), resampling)
    return image


@contextlib.contextmanager
def _opened_upright(source: bytes | str | os.PathLike):
    """``with _opened_upright(source) as image``: opened, size-checked, loaded and EXIF-rotated.

    Every failure inside the block becomes an `ImageDecodeError` that says why.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageDecodeError("the image is empty (0 bytes)")
        source = io.BytesIO(bytes(source))
    else:
        source = Path(source)
    try:
        with Image.open(source) as image:
            width, height = image.size
            if min(width, height) < MIN_INPUT_SIDE:
                raise ImageDecodeError(
                    f"the image is {width}x{height} pixels, smaller than the {MIN_INPUT_SIDE} pixels a side "
                    "a detector accepts"
                )
            if width * height > MAX_INPUT_PIXELS:
                raise ImageDecodeError(
                    f"the image is {width}x{height} pixels, more than the {MAX_INPUT_PIXELS} "
                    "pixels a detector accepts; resize it first"
                )
            image.load()
            if image.getexif().get(EXIF_ORIENTATION_TAG, 1) != 1:
                yield ImageOps.exif_transpose(image)
            else:
                yield image
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


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images as 8-bit ``L`` (module docstring); others unchanged."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image)
        if image.mode == "F":
            if not np.all(np.isfinite(values)):
                raise ImageDecodeError("the float image holds NaN or infinite values")
            low, high, full_range = float(values.min()), float(values.max()), 1.0
            if low < 0.0 or high > 1.0:
                raise ImageDecodeError(
                    f"the float image holds values in [{low:g}, {high:g}]; float images are read "
                    "as intensities in [0, 1]: rescale it to that range or save it as 8/16-bit"
                )
        else:
            low, high, full_range = int(values.min()), int(values.max()), 65535.0
            if low < 0 or high > 65535:
                raise ImageDecodeError(
                    f"the {image.mode} image holds values in [{low}, {high}]; integer images are "
                    "read as 8 or 16 bits (0..65535): rescale it to that range"
                )
        eight_bit = np.rint(values.astype(np.float64) * (255.0 / full_range)).astype(np.uint8)
        return Image.fromarray(eight_bit)
    return image
