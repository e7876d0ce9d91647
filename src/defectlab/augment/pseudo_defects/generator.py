"""The seeded generator: `PseudoDefectGenerator` and `derive_seed`.

The generator checks its settings and inputs up front, picks a kind at
random for each image (falling back to the other kinds when one cannot mark
the image) and makes batches whose bytes depend only on the seed and the
inputs. `derive_seed` mixes several integers, e.g. seed, epoch and batch
index, into one seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from defectlab.augment.pseudo_defects.checks import (
    SMALLEST_SUPPORTED_IMAGE_SIZE,
    NoVisibleDefectError,
    PseudoDefectError,
    _check_batch,
    _check_image,
    _check_source,
)
from defectlab.augment.pseudo_defects.kinds import DEFAULT_KINDS, DEFECT_KINDS

def derive_seed(*keys: int) -> int:
    """Mix several non-negative integers into one seed, e.g. ``(seed, epoch, batch_index)``.

    Parameters
    ----------
    *keys : int
        Non-negative integers; their order matters.

    Returns
    -------
    int
        A seed in [0, 2**63), the same for the same keys on every platform
        (it comes from `numpy.random.SeedSequence`), and unrelated for
        different keys, unlike sums or products that collide.
    """
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class PseudoDefectGenerator:
    """Draws pseudo-defects of randomly chosen kinds, reproducibly.

    Parameters
    ----------
    kinds : sequence of str
        Names from `DEFECT_KINDS` to choose from, uniformly; a single name is
        accepted too. Default: all of them.
    seed : int
        Seed of `synthesise` calls that pass no ``rng``, and of `batch`
        calls that pass no ``seed``.
    min_image_size : int
        Smallest accepted height and width in pixels; smaller images raise
        `PseudoDefectError` instead of producing defects out of proportion.

    Raises
    ------
    PseudoDefectError
        Unknown kind names (the message lists the valid ones), no kinds, a
        negative seed or a ``min_image_size`` below
        `SMALLEST_SUPPORTED_IMAGE_SIZE`.

    Examples
    --------
    >>> generator = PseudoDefectGenerator(kinds=("cutpaste", "perlin_blend"), seed=3)
    >>> images, masks, kinds = generator.batch(good_images, seed=epoch)  # doctest: +SKIP
    """

    kinds: Sequence[str] = DEFAULT_KINDS
    seed: int = 0
    min_image_size: int = 32
    _default_rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        if not kinds:
            raise PseudoDefectError(
                f"kinds is empty; choose at least one of: {', '.join(DEFECT_KINDS)}"
            )
        unknown = [kind for kind in kinds if kind not in DEFECT_KINDS]
        if unknown:
            raise PseudoDefectError(
                f"unknown pseudo-defect kind(s) {', '.join(map(repr, unknown))}; "
                f"valid kinds: {', '.join(DEFECT_KINDS)}"
            )
        self.kinds = kinds
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise PseudoDefectError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if (
            isinstance(self.min_image_size, bool)
            or not isinstance(self.min_image_size, (int, np.integer))
            or self.min_image_size < SMALLEST_SUPPORTED_IMAGE_SIZE
        ):
            raise PseudoDefectError(
                f"min_image_size must be an integer >= {SMALLEST_SUPPORTED_IMAGE_SIZE}, "
                f"got {self.min_image_size!r}"
            )
        self._default_rng = np.random.default_rng(self.seed)

    def _check_size(self, height: int, width: int, name: str) -> None:
        if min(height, width) < self.min_image_size:
            raise PseudoDefectError(
                f"{name} is {height}x{width} px, smaller than the minimum "
                f"{self.min_image_size}x{self.min_image_size} px (min_image_size={self.min_image_size}); "
                "use larger images or lower min_image_size"
            )

    def check_images(self, images: np.ndarray, sources: np.ndarray | None = None) -> None:
        """Validate a batch (and its sources) up front, as `batch` would.

        Parameters
        ----------
        images : numpy.ndarray
            uint8 (count, height, width, channels), channels 1 or 3.
        sources : numpy.ndarray or None
            uint8 (source count, height, width, channels), or None.

        Raises
        ------
        PseudoDefectError
            Wrong type, dtype, number of dimensions or channels, an image
            below ``min_image_size``, or sources shaped unlike the images.
        """
        _check_batch(images, "images")
        self._check_size(images.shape[1], images.shape[2], "images")
        if sources is not None:
            _check_batch(sources, "sources")
            if sources.shape[1:] != images.shape[1:]:
                raise PseudoDefectError(
                    f"sources must be shaped (count, {', '.join(map(str, images.shape[1:]))}) "
                    f"like the images, got {sources.shape}"
                )

    def synthesise(
        self,
        image: np.ndarray,
        rng: np.random.Generator | None = None,
        source: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """One pseudo-defect of a randomly chosen kind.

        If the chosen kind cannot change this image visibly (a blur on a
        flat image), the other kinds are tried in random order, so only an
        image no kind can mark raises.

        Parameters
        ----------
        image : numpy.ndarray
            uint8 (height, width, channels), channels 1 or 3.
        rng : numpy.random.Generator or None
            Source of randomness; None uses the generator's own stream,
            seeded by ``seed`` (each call then continues that stream).
        source : numpy.ndarray or None
            Texture for `perlin_blend`, uint8 and shaped like ``image``.

        Returns
        -------
        defective_image : numpy.ndarray
            uint8, same shape as ``image``; equal to it outside ``mask``.
        mask : numpy.ndarray
            bool (height, width), exactly the changed pixels, never empty.
        kind : str
            Name of the kind that made the defect.

        Raises
        ------
        PseudoDefectError
            Invalid ``image`` or ``source`` (see `check_images`).
        NoVisibleDefectError
            No allowed kind could change the image visibly.
        """
        _check_image(image)
        self._check_size(image.shape[0], image.shape[1], "image")
        _check_source(source, image)
        rng = self._default_rng if rng is None else rng
        first_choice = int(rng.integers(len(self.kinds)))
        fallbacks = [self.kinds[i] for i in rng.permutation(len(self.kinds)) if i != first_choice]
        for kind in [self.kinds[first_choice], *fallbacks]:
            try:
                defective, mask = DEFECT_KINDS[kind](image, rng, source)
            except NoVisibleDefectError:
                continue
            return defective, mask, kind
        raise NoVisibleDefectError(
            f"none of the kinds {', '.join(self.kinds)} could change this image of shape "
            f"{image.shape} visibly; is it (nearly) constant?"
        )

    __call__ = synthesise

    def batch(
        self,
        images: np.ndarray,
        seed: int | None = None,
        sources: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """A pseudo-defect for every image of a batch, determined by ``seed`` alone.

        Image ``i`` gets its own random stream derived from ``(seed, i)``, so
        the output depends only on the seed and the inputs, not on earlier
        calls, and the same seed always gives identical bytes.

        Parameters
        ----------
        images : numpy.ndarray
            uint8 (count, height, width, channels), channels 1 or 3.
        seed : int or None
            Non-negative seed; None uses the generator's ``seed``. Vary it
            per epoch to see new defects.
        sources : numpy.ndarray or None
            uint8 (source count, height, width, channels): textures for
            `perlin_blend`, one drawn at random per image; None makes it use
            rearranged copies of each image itself.

        Returns
        -------
        defective_images : numpy.ndarray
            uint8, same shape as ``images``.
        masks : numpy.ndarray
            bool (count, height, width).
        kinds : tuple of str
            Kind name of every defect.

        Raises
        ------
        PseudoDefectError
            Invalid ``images``, ``sources`` or ``seed`` (see `check_images`).
        NoVisibleDefectError
            Some image could not be marked by any allowed kind.
        """
        self.check_images(images, sources)
        seed = self.seed if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PseudoDefectError(f"seed must be a non-negative integer, got {seed!r}")
        defective_images = np.empty_like(images)
        masks = np.empty(images.shape[:3], dtype=bool)
        kinds = []
        for index, image in enumerate(images):
            rng = np.random.default_rng([int(seed), index])
            source = None if sources is None else sources[int(rng.integers(len(sources)))]
            defective_images[index], masks[index], kind = self.synthesise(image, rng, source)
            kinds.append(kind)
        return defective_images, masks, tuple(kinds)
