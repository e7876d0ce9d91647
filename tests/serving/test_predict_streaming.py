"""The streaming of ``defectlab predict`` without a detector: how far decoding runs ahead, and the input forms."""

from __future__ import annotations

import time

import numpy as np

from defectlab.data import ImageDecoder
from defectlab.serving.predict import decoded_batches, list_input_images


class CountingDecoder:
    """An `ImageDecoder` stand-in that counts the files it decoded."""

    def __init__(self):
        self.inner = ImageDecoder(8)
        self.decoded = 0

    def empty_batch(self, count: int = 0):
        return self.inner.empty_batch(count)

    def decode(self, path):
        self.decoded += 1
        return np.full((8, 8, 3), 7, dtype=np.uint8)


def test_decoding_runs_at_most_one_batch_ahead_of_scoring():
    decoder, batch_size = CountingDecoder(), 5
    paths = [f"image_{index}.png" for index in range(53)]
    seen = []

    for index, batch in enumerate(decoded_batches(paths, decoder, batch_size)):
        time.sleep(0.05)  # a slow "scoring" step: the decoder must wait, not race ahead
        # this batch, one waiting in the queue, one being decoded
        assert decoder.decoded <= (index + 3) * batch_size
        seen.extend(batch.paths)

    assert seen == paths


def test_a_scoring_loop_left_early_stops_the_decoding_thread():
    decoder = CountingDecoder()
    batches = decoded_batches([f"image_{index}.png" for index in range(1000)], decoder, 10)
    next(batches)
    batches.close()
    decoded_when_closed = decoder.decoded
    time.sleep(0.2)

    assert decoder.decoded == decoded_when_closed <= 30


def test_a_glob_and_a_single_file_are_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.png", "a/y.JPG", "b.png"):
        (tmp_path / name).write_bytes(b"")

    assert list_input_images(str(tmp_path / "**" / "*.png")) == [str(tmp_path / "a/x.png"), str(tmp_path / "b.png")]
    assert list_input_images(str(tmp_path / "b.png")) == [str(tmp_path / "b.png")]
    assert list_input_images(str(tmp_path)) == [str(tmp_path / "a/x.png"), str(tmp_path / "a/y.JPG"), str(tmp_path / "b.png")]


def test_an_overlay_draws_the_contour_on_the_border_of_the_region_above_the_threshold():
    from defectlab.evaluation.figures import OVERLAY_CONTOUR_COLOUR, anomaly_overlay_image

    image = np.full((64, 64, 3), 100, dtype=np.uint8)
    anomaly_map = np.zeros((64, 64))
    anomaly_map[20:30, 40:50] = 2.0  # above the threshold 1.0
    overlay = anomaly_overlay_image(image, anomaly_map, threshold=1.0, title="x.png")
    scale, title_height, gap = 4, 18, 8  # 64 px is enlarged to 256
    assert overlay.shape == (title_height + 256, 2 * 256 + gap, 3)
    right = overlay[title_height:, 256 + gap:]
    contour = np.all(right == OVERLAY_CONTOUR_COLOUR, axis=-1)[::scale, ::scale]
    expected = np.zeros((64, 64), bool)
    expected[20:30, 40:50] = True
    expected[21:29, 41:49] = False  # the border only
    np.testing.assert_array_equal(contour, expected)
    np.testing.assert_array_equal(overlay[title_height:, :256], 100)  # the input panel is the image itself
