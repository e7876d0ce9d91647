"""An image's score is the same whatever it is scored with: alone, in any batch, at any position.

``predict``, the scoring server and evaluation batch images differently; each
method's networks therefore run in batches of one shape whose last row is
padding (`defectlab.methods.batches`), so a score depends on its image alone.
The equality is exact: the same image goes through the same arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest

from defectlab.methods.batches import FIXED_BATCH, fixed_shape_batches, predict_fixed_shape
from defectlab.serving.detector import load_detector


def test_fixed_shape_batches_pad_every_batch_to_one_shape_with_a_padding_row_last():
    images = np.arange(16 * 2, dtype=np.uint8).reshape(16, 2)
    batches = list(fixed_shape_batches(images))
    assert [count for _, count in batches] == [FIXED_BATCH - 1, FIXED_BATCH - 1, 2]
    assert all(batch.shape == (FIXED_BATCH, 2) and batch.dtype == np.uint8 for batch, _ in batches)
    assert all(not batch[count:].any() for batch, count in batches)
    np.testing.assert_array_equal(np.concatenate([batch[:count] for batch, count in batches]), images)


class RowSums:
    """A stand-in network: one output, a row's sum; records the shapes it was called with."""

    output_shape = (None,)

    def __init__(self):
        self.shapes = []

    def predict_on_batch(self, batch):
        self.shapes.append(batch.shape)
        return batch.reshape(len(batch), -1).sum(axis=1)


def test_predict_fixed_shape_calls_one_shape_and_returns_only_the_images_rows():
    network = RowSums()
    images = np.ones((10, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(predict_fixed_shape(network, images), np.full(10, 9.0))
    assert set(network.shapes) == {(FIXED_BATCH, 3, 3)}
    assert predict_fixed_shape(network, images[:0]).shape == (0,)


@pytest.mark.training
@pytest.mark.parametrize("source_detector", ["metric", "patch", "ssim"], indirect=True)
def test_an_images_score_does_not_depend_on_its_batch(source_detector, tiny_dataset_root):
    detector = load_detector(source_detector.model_uri)
    carpet = tiny_dataset_root / "carpet" / "test"
    paths = sorted(carpet.glob("*/*.png"))[:2 * FIXED_BATCH + 3]
    images = np.stack([detector.decoder.decode(path) for path in paths])

    together = detector.score(images)[0]
    one_at_a_time = np.array([detector.score(images[index:index + 1])[0][0] for index in range(len(images))])
    reversed_order = detector.score(images[::-1])[0][::-1]
    first_everywhere = detector.score(np.repeat(images[:1], FIXED_BATCH + 1, axis=0))[0]

    np.testing.assert_array_equal(one_at_a_time, together)
    np.testing.assert_array_equal(reversed_order, together)
    np.testing.assert_array_equal(first_everywhere, np.full(FIXED_BATCH + 1, together[0]))
