"""Decoding of detector input: each kind of bad value is an HTTP-400 `MlflowException` naming the row and problem.

The same cases against a real ``mlflow models serve`` are in tests/integration/test_serving.py.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from defectlab.data import ImageDecoder
from defectlab.serving.detector import decode_image, decode_images, encode_png


def blank_grayscale_png(width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels, written row by row (never held decoded)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then one byte per pixel
    pixel_data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel_data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def good_png() -> bytes:
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    return encode_png(np.stack([gradient] * 3, axis=-1))


def test_base64_png_decodes_to_the_detector_size(good_png):
    image = decode_image(base64.b64encode(good_png).decode(), ImageDecoder(32, False))

    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_image_file_path_decodes(tmp_path, good_png):
    path = tmp_path / "good.png"
    path.write_bytes(good_png)

    assert decode_image(str(path), ImageDecoder(64, True)).shape == (64, 64, 1)


@pytest.mark.parametrize(
    "make_value,message",
    [
        (lambda png: base64.b64encode(b"plain text, not a picture").decode(), "not a readable PNG/JPEG image"),
        (lambda png: base64.b64encode(png[: len(png) // 2]).decode(), "truncated"),
        (lambda png: "", "the image value is empty"),
        (lambda png: "%%% not base64 %%%", "neither base64-encoded PNG/JPEG data nor an existing file path"),
        (lambda png: 3, "has type int"),
        (lambda png: "/proc/self/mem", "cannot read the image file"),
        (lambda png: base64.b64encode(blank_grayscale_png(7_000, 7_000)).decode(), "7000x7000 pixels"),
        (lambda png: base64.b64encode(blank_grayscale_png(20_000, 20_000)).decode(), "too large"),
    ],
    ids=["not-an-image", "truncated", "empty", "not-base64", "number", "unreadable-file", "over-limit", "bomb"],
)
def test_bad_value_is_an_invalid_parameter_naming_the_row(good_png, make_value, message):
    frame = pd.DataFrame({"image": [base64.b64encode(good_png).decode(), make_value(good_png)]})

    with pytest.raises(MlflowException, match=message) as raised:
        decode_images(frame, ImageDecoder(32, False))

    assert raised.value.get_http_status_code() == 400
    assert "row 1" in raised.value.message


def test_missing_image_column_is_named():
    with pytest.raises(MlflowException, match="no column 'image' \\(columns: picture\\)"):
        decode_images(pd.DataFrame({"picture": ["x"]}), ImageDecoder(32, False))


def test_no_rows_is_an_error():
    with pytest.raises(MlflowException, match="holds no images"):
        decode_images(pd.DataFrame({"image": []}), ImageDecoder(32, False))
