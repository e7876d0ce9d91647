"""SSIM autoencoder (Bergmann et al. 2018): training, anomaly maps, image scores.

The network (`defectlab.methods.ssim.network.build_ssim_autoencoder`) learns to reconstruct
defect-free images scaled to [0, 1]. A defect is what it cannot reconstruct.

Loss
    ``1 - SSIM`` between input and reconstruction (``tf.image.ssim`` with a
    Gaussian window of ``ssim_window`` pixels, sigma 1.5), or the mean squared
    error for ``loss=l2`` (the paper's AE-L2 row).

Training data
    The good train images, augmented on the fly in tf.data to ``augment_to``
    samples per epoch (nothing is written to disk): random crops resized back
    to full size, and for textures any flip, transpose or 90-degree rotation.
    Objects only get small crops (a slight shift and zoom): flipping a cable
    swaps its wire colours, mirroring a capsule its print.

Anomaly map
    Per pixel ``1 - SSIM`` between input and reconstruction, at the input's full
    size: the local statistics use the same Gaussian window with the image
    reflected at its borders, so the map has no ``window - 1`` pixel margin
    missing (``tf.image.ssim``'s own map is that much smaller). Inside the
    margin it equals ``1 -`` ``tf.image.ssim``'s map. RGB maps are averaged
    over the channels.

Image score and decision rule
    The MVTec AD paper flags an image when the residual map, thresholded,
    contains a connected region of at least a minimum defect area, with the
    threshold raised on defect-free validation images until none of them is
    flagged. The image score here is that rule turned into one number: the
    highest residual level ``t`` at which the pixels with ``map >= t`` still
    hold a connected region of ``min_defect_area`` pixels (an area opening of
    the map, read at its peak). An image is flagged by the rule at residual
    threshold ``T`` exactly when ``score > T`` (up to ties), so the threshold
    `defectlab.evaluation.evaluate` chooses from the good ``threshold`` split
    (the largest good score) *is* the paper's threshold, and
    ``test_tpr_at_val_threshold`` / ``test_tnr_at_val_threshold`` are the
    paper's decision rule. ``min_defect_area`` is fixed in advance at
    `MIN_DEFECT_AREA_FRACTION` of the image (no defect is used to choose it).
    Higher score = more anomalous, as everywhere in defectlab.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from defectlab.methods.batches import fixed_shape_batches
from defectlab.methods.keras_training import RaiseOnBadLoss, make_optimizer
from defectlab.methods.ssim.config import SSIMConfig
from defectlab.methods.ssim.network import build_ssim_autoencoder
# The image score is NumPy in a module of its own (exported detectors use it without TensorFlow).
from defectlab.methods.ssim.region import (  # noqa: F401
    MIN_DEFECT_AREA_FRACTION, largest_region_area, min_defect_area_for, region_score, region_scores,
)
from defectlab.data.synthetic import TEXTURE_CATEGORIES as SYNTHETIC_TEXTURE_CATEGORIES

# Textures take any flip or 90-degree rotation; MVTec AD's other textures likewise.
TEXTURE_CATEGORIES = tuple(sorted({*SYNTHETIC_TEXTURE_CATEGORIES, "grid", "tile", "wood"}))
TEXTURE_MIN_CROP_FRACTION = 0.75
OBJECT_MIN_CROP_FRACTION = 0.94
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
AUTOENCODER_FILE = "autoencoder.keras"


# SSIM: loss and full-size map


def ssim_loss(ssim_window: int):
    """Keras loss ``1 - SSIM`` per image (``tf.image.ssim``, images in [0, 1])."""

    def one_minus_ssim(target_images, reconstructions):
        return 1.0 - tf.image.ssim(
            target_images, reconstructions, max_val=1.0, filter_size=ssim_window,
            filter_sigma=SSIM_FILTER_SIGMA, k1=SSIM_K1, k2=SSIM_K2,
        )

    return one_minus_ssim


def training_loss(loss: str, ssim_window: int):
    """The loss named by the config: ``ssim`` (1 - SSIM) or ``l2`` (mean squared error)."""
    if loss == "ssim":
        return ssim_loss(ssim_window)
    if loss == "l2":
        return "mean_squared_error"
    raise ValueError(f"unknown loss {loss!r}; choose ssim or l2")


def gaussian_profile(size: int, sigma: float = SSIM_FILTER_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian ``(size,)``; its outer product with itself is ``tf.image.ssim``'s 2-D window."""
    coordinates = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    profile = np.exp(-(coordinates**2) / (2.0 * sigma**2))
    return profile / profile.sum()


def ssim_map(images_a, images_b, ssim_window: int, max_val: float = 1.0):
    """Per-pixel SSIM of two batches ``(n, h, w, c)``, same size as the input: ``(n, h, w)``.

    Local means, variances and covariance are Gaussian-weighted over
    ``ssim_window`` pixels; the images are reflected at the borders so every
    pixel has a full window. Channels are averaged. The local statistics'
    inputs are stacked on the channel axis and filtered together, by the
    Gaussian's row and then its column (the window is separable: ``2 w``
    instead of ``w * w`` products per pixel).

    Written with ``keras.ops``: called on arrays it computes eagerly (a
    backend tensor), called on Keras tensors it builds layers, which is how
    `anomaly_map_network` carries the map inside the detector's graph (and
    the exported detector inside its ONNX graph).
    """
    images_a = keras.ops.cast(images_a, "float32")
    images_b = keras.ops.cast(images_b, "float32")
    channels = images_a.shape[-1]
    half = ssim_window // 2
    profile = gaussian_profile(ssim_window)
    padding = [[0, 0], [half, half], [half, half], [0, 0]]
    # Reflecting the images first reflects their products too (fewer channels to pad).
    images_a = keras.ops.pad(images_a, padding, mode="reflect")
    images_b = keras.ops.pad(images_b, padding, mode="reflect")
    stacked = keras.ops.concatenate(  # the variances are only ever used summed
        [images_a, images_b, images_a * images_b, keras.ops.square(images_a) + keras.ops.square(images_b)],
        axis=-1,
    )
    row_kernel = np.tile(profile.reshape(1, -1, 1, 1), (1, 1, 4 * channels, 1)).astype(np.float32)
    column_kernel = np.tile(profile.reshape(-1, 1, 1, 1), (1, 1, 4 * channels, 1)).astype(np.float32)
    local = keras.ops.depthwise_conv(stacked, row_kernel, strides=1, padding="valid")
    local = keras.ops.depthwise_conv(local, column_kernel, strides=1, padding="valid")
    mean_a, mean_b, mean_ab_product, mean_square_sum = (
        local[..., index * channels:(index + 1) * channels] for index in range(4)
    )

    c1 = (SSIM_K1 * max_val) ** 2
    c2 = (SSIM_K2 * max_val) ** 2
    mean_ab = mean_a * mean_b
    mean_squares = keras.ops.square(mean_a) + keras.ops.square(mean_b)
    luminance = (2.0 * mean_ab + c1) / (mean_squares + c1)
    covariance_twice = 2.0 * (mean_ab_product - mean_ab)
    variances = mean_square_sum - mean_squares
    contrast_structure = (covariance_twice + c2) / (variances + c2)
    return keras.ops.mean(luminance * contrast_structure, axis=-1)


def anomaly_map_network(autoencoder: keras.Model, ssim_window: int) -> keras.Model:
    """Keras model: ``uint8``-range images ``(n, s, s, c)`` -> (reconstructions in [0, 1], ``1 - SSIM`` maps ``(n, s, s)``).

    The detector's whole per-image computation in one graph: Keras compiles
    it once and runs it a batch at a time, and the ONNX export writes this
    same model.
    """
    images = keras.Input(shape=tuple(autoencoder.input_shape[1:]), name="images")
    unit_images = images / 255.0  # `to_unit_range`
    reconstructions = autoencoder(unit_images)
    if isinstance(reconstructions, (list, tuple)):  # trained autoencoders keep Keras's list of one output
        (reconstructions,) = reconstructions
    anomaly_maps = 1.0 - ssim_map(unit_images, reconstructions, ssim_window)
    return keras.Model(images, [reconstructions, anomaly_maps], name="ssim_anomaly_map")


def to_unit_range(images) -> tf.Tensor:
    """``uint8`` images to float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


# Augmentation pipeline


def is_texture(category: str) -> bool:
    return category in TEXTURE_CATEGORIES


def augment_batch(images, seed, texture: bool) -> tf.Tensor:
    """Randomly crop (and resize back), and for textures flip/transpose, a ``uint8`` batch.

    Returns float32 images in [0, 1]. ``seed`` is a shape-(2,) integer tensor;
    the same seed gives the same batch.

    One ``crop_and_resize`` does the crop, the resize and both flips (a box
    whose corners are swapped samples the crop mirrored); only the transpose
    is a separate step, on the ``uint8`` images before anything is converted.
    """
    batch_size = tf.shape(images)[0]
    image_height, image_width = images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    min_crop_fraction = TEXTURE_MIN_CROP_FRACTION if texture else OBJECT_MIN_CROP_FRACTION
    crop_fraction = tf.random.stateless_uniform(
        [batch_size, 1], seeds[0], minval=min_crop_fraction, maxval=1.0
    )
    crop_start = tf.random.stateless_uniform([batch_size, 2], seeds[1]) * (1.0 - crop_fraction)
    crop_end = crop_start + crop_fraction
    if texture:
        # Left-right flip, up-down flip and transpose, each with probability 1/2,
        # reach all eight flips and 90-degree rotations of a square.
        flip = tf.random.stateless_uniform([batch_size, 2], seeds[2]) < 0.5  # (up-down, left-right)
        crop_start, crop_end = tf.where(flip, crop_end, crop_start), tf.where(flip, crop_start, crop_end)
        transposed = tf.random.stateless_uniform([batch_size, 1, 1, 1], seeds[3]) < 0.5
        images = tf.where(transposed, tf.transpose(images, [0, 2, 1, 3]), images)
    boxes = tf.concat([crop_start, crop_end], axis=1)  # (y1, x1, y2, x2)
    images = tf.image.crop_and_resize(
        images, boxes, tf.range(batch_size), [image_height, image_width]
    ) / 255.0
    return tf.clip_by_value(images, 0.0, 1.0)


def augmented_dataset(
    good_images: np.ndarray, category: str, augment_to: int, batch_size: int, seed: int
) -> tf.data.Dataset:
    """``(input, target)`` batches of ``augment_to`` augmented samples per pass, made on the fly.

    The images stay in memory once; each pass (epoch) draws a fresh shuffle and
    fresh augmentations from the seed. Nothing is written to disk.
    """
    if len(good_images) == 0:
        raise ValueError("no good images to train the autoencoder on")
    image_table = tf.constant(good_images)
    passes = math.ceil(augment_to / len(good_images))
    texture = is_texture(category)
    indices = (
        tf.data.Dataset.range(len(good_images))
        .shuffle(len(good_images), seed=seed, reshuffle_each_iteration=True)
        .repeat(passes)
        .take(augment_to)
        .batch(batch_size)
    )
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def make_batch(batch_indices, batch_seed):
        images = augment_batch(tf.gather(image_table, batch_indices), batch_seed, texture)
        return images, images

    return (
        tf.data.Dataset.zip((indices, batch_seeds))
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def train_ssim_autoencoder(
    good_images: np.ndarray,
    config: SSIMConfig,
    seed: int,
    callbacks: list | None = None,
    verbose: int | str = "auto",
) -> tuple[keras.Model, keras.callbacks.History]:
    """Train the autoencoder on augmented good images (``uint8``, ``(n, size, size, channels)``).

    Returns the trained network (input and output in [0, 1]) and Keras's
    history. Raises `defectlab.methods.keras_training.NonFiniteLossError` if the
    loss stops being finite.
    """
    keras.utils.set_random_seed(seed)
    autoencoder = build_ssim_autoencoder(config.image_size, good_images.shape[-1], config.latent_dim)
    autoencoder.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate),
        loss=training_loss(config.loss, config.ssim_window),
    )
    history = autoencoder.fit(
        augmented_dataset(good_images, config.category, config.augment_to, config.batch_size, seed),
        epochs=config.epochs,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn that it ignores this
        callbacks=[RaiseOnBadLoss(), *(callbacks or [])],
        verbose=verbose,
    )
    # An uncompiled twin sharing the trained layers: saves and reloads without the loss function.
    inference_autoencoder = keras.Model(autoencoder.inputs, autoencoder.outputs, name=autoencoder.name)
    return inference_autoencoder, history


class SSIMDetectorScorer:
    """Scores images with a trained SSIM autoencoder; higher = more anomalous.

    Parameters
    ----------
    autoencoder : keras.Model
        Maps images in [0, 1] to reconstructions in [0, 1].
    ssim_window : int
        Window of the SSIM anomaly map.
    min_defect_area : int
        Minimum defect area in pixels of the image score (see the module docstring).
    batch_size : int
        Images per step of `anomaly_maps` from given reconstructions (the
        network itself always runs in `fixed_shape_batches`).
    """

    def __init__(self, autoencoder: keras.Model, ssim_window: int = 11,
                 min_defect_area: int = 1, batch_size: int = 32):
        if min_defect_area < 1:
            raise ValueError(f"min_defect_area must be at least 1, got {min_defect_area}")
        self.autoencoder = autoencoder
        self.ssim_window = ssim_window
        self.min_defect_area = min_defect_area
        self.batch_size = batch_size
        self._map_network = None
        self._compiled_outputs = None

    @property
    def map_network(self) -> keras.Model:
        """`anomaly_map_network` of this detector (built on first use)."""
        if self._map_network is None:
            self._map_network = anomaly_map_network(self.autoencoder, self.ssim_window)
        return self._map_network

    def _compiled_call(self):
        """`map_network` on one ``uint8`` batch, compiled once by ``tf.function`` for any batch length.

        Keras's ``predict`` would wrap every call in its own data pipeline,
        callbacks and output gathering: at 64 px that costs about a fifth of
        the network itself, more than the map.
        """
        if self._compiled_outputs is None:
            network = self.map_network
            signature = tf.TensorSpec((None, *network.input_shape[1:]), tf.uint8)

            @tf.function(input_signature=[signature])
            def outputs(images):
                return network(tf.cast(images, tf.float32), training=False)

            self._compiled_outputs = outputs
        return self._compiled_outputs

    def _outputs_by_batch(self, images: np.ndarray):
        """Yields (reconstructions, maps) of each batch of ``uint8`` images, in order, as tensors.

        The next batch goes through the network in a background thread while
        the caller works on this one (the region search of its maps), so the
        two overlap; at most two batches' outputs exist at a time. The caller
        converts what it uses (scoring never copies the reconstructions out).
        """
        images = np.asarray(images)
        if images.dtype != np.uint8:  # a float image in [0, 1] would be read as almost black
            raise TypeError(f"the SSIM detector scores uint8 images (0..255), got {images.dtype}")
        compiled = self._compiled_call()

        def outputs(batch: np.ndarray, count: int):
            reconstructions, anomaly_maps = compiled(batch)
            return reconstructions[:count], anomaly_maps[:count]

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssim-network") as pool:
            pending = None
            for batch, count in fixed_shape_batches(images):
                submitted = pool.submit(outputs, batch, count)
                if pending is not None:
                    yield pending.result()
                pending = submitted
            if pending is not None:
                yield pending.result()

    def _network_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reconstructions, maps) of all ``uint8`` images."""
        reconstructions = [np.zeros((0, *np.shape(images)[1:]), dtype=np.float32)]
        anomaly_maps = [np.zeros((0, *np.shape(images)[1:3]), dtype=np.float32)]
        for batch_reconstructions, batch_maps in self._outputs_by_batch(images):
            reconstructions.append(batch_reconstructions.numpy())
            anomaly_maps.append(batch_maps.numpy())
        return np.concatenate(reconstructions), np.concatenate(anomaly_maps)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Reconstructions of ``uint8`` images: float32 in [0, 1], same shape."""
        return self._network_outputs(images)[0]

    def anomaly_maps(self, images: np.ndarray, reconstructions: np.ndarray | None = None) -> np.ndarray:
        """Per-pixel ``1 - SSIM`` of ``uint8`` images and their reconstructions: float32 ``(n, h, w)``.

        Without ``reconstructions`` the detector's own are used (computed in
        the same graph as the map).
        """
        if reconstructions is None:
            return self._network_outputs(images)[1]
        maps = [np.zeros((0, *images.shape[1:3]), dtype=np.float32)]
        for start in range(0, len(images), self.batch_size):  # a batch at a time: bounded memory
            stop = start + self.batch_size
            similarity = ssim_map(to_unit_range(images[start:stop]), reconstructions[start:stop], self.ssim_window)
            maps.append((1.0 - keras.ops.convert_to_numpy(similarity)).astype(np.float32))
        return np.concatenate(maps)

    def scores_of_maps(self, anomaly_maps: np.ndarray) -> np.ndarray:
        """Image scores ``(n,)`` of anomaly maps ``(n, h, w)`` (`region_score`)."""
        return region_scores(anomaly_maps, self.min_defect_area)

    def score_images_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(n,)`` (higher = more anomalous) and anomaly maps ``(n, h, w)`` of ``uint8`` images."""
        return self._scores(images, keep_maps=True)

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """Anomaly score per ``uint8`` image, shape ``(n,)``; higher = more anomalous."""
        return self._scores(images, keep_maps=False)[0]

    def _scores(self, images: np.ndarray, keep_maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores, and the maps if kept; each batch's regions are searched while the next is computed."""
        scores = [np.zeros(0, dtype=np.float64)]
        anomaly_maps = [np.zeros((0, *np.shape(images)[1:3]), dtype=np.float32)]
        for _, batch_maps in self._outputs_by_batch(images):
            batch_maps = batch_maps.numpy()
            scores.append(self.scores_of_maps(batch_maps))
            if keep_maps:
                anomaly_maps.append(batch_maps)
        return np.concatenate(scores), np.concatenate(anomaly_maps) if keep_maps else None

    def save(self, folder: Path) -> dict:
        """Write the network as ``autoencoder.keras``; returns the JSON-able description."""
        self.autoencoder.save(Path(folder) / AUTOENCODER_FILE)
        return {
            "autoencoder": AUTOENCODER_FILE,
            "ssim_window": int(self.ssim_window),
            "min_defect_area": int(self.min_defect_area),
        }

    @classmethod
    def load(cls, folder: Path, description: dict) -> "SSIMDetectorScorer":
        autoencoder = keras.models.load_model(Path(folder) / description["autoencoder"], compile=False)
        return cls(
            autoencoder,
            ssim_window=int(description["ssim_window"]),
            min_defect_area=int(description["min_defect_area"]),
        )
