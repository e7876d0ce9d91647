"""Pseudo-defects: synthesised anomalies a self-supervised method trains on.

Self-supervised anomaly detectors (CutPaste, DRAEM and their relatives) learn
from good images only, by inventing defects and learning to tell them apart or
to segment them. This package invents those defects. It is deliberately a
different renderer from the one that draws the project's synthetic *test*
defects (``defectlab.data.synthetic``): a method that trains on the generator
it is tested on would be graded on memorising that generator, not on finding
anomalies.

Every defect kind is a function

    ``kind(image, rng, source=None) -> (defective_image, mask)``

taking a ``uint8`` image of shape ``(height, width, channels)`` (``channels``
1 or 3), a `numpy.random.Generator` and an optional second good image of the
same shape to borrow texture from. Two promises hold for every returned pair:

* the mask covers exactly the changed pixels: ``mask[y, x]`` is true if and
  only if some channel of ``defective_image[y, x]`` differs from the original,
  so the image outside the mask is byte-identical to the input;
* the defect is real: at least `minimum_defect_pixels` pixels changed by
  `VISIBLE_DIFFERENCE_LEVELS` grey levels or more. A draw that misses (a blur
  over a flat patch, a stroke the colour of the background) is thrown away and
  drawn again, up to `MAX_ATTEMPTS_PER_DEFECT` times.

`PseudoDefectGenerator` picks kinds at random and adds seeded batches;
`example_grid` draws examples for a run's artifacts. This package needs NumPy
and Matplotlib only (no TensorFlow); the ``tf.data`` adapter lives in
``defectlab.augment.pseudo_defects_tf``.

The package, one concern per module, each importing only those listed
before it: ``checks`` (errors, input checks, the exact-mask contract),
``shapes`` (Perlin noise, Perlin and blob regions), ``transforms`` (colour
jitter, rearrangements, photometric changes, Gaussian blur), ``cutpaste``
(the CutPaste and scar kinds), ``kinds`` (the other four kinds and
`DEFECT_KINDS`), ``generator`` (`PseudoDefectGenerator`, `derive_seed`) and
``figures`` (`example_grid`). Every public name is re-exported here, so
``from defectlab.augment.pseudo_defects import ...`` works as before.

References
----------
C.-L. Li, K. Sohn, J. Yoon, T. Pfister. "CutPaste: Self-Supervised Learning
for Anomaly Detection and Localization." CVPR 2021.

V. Zavrtanik, M. Kristan, D. Skočaj. "DRAEM - A discriminatively trained
reconstruction embedding for surface anomaly detection." ICCV 2021.
"""

from defectlab.augment.pseudo_defects.checks import (
    MAX_ATTEMPTS_PER_DEFECT,
    SMALLEST_SUPPORTED_IMAGE_SIZE,
    VISIBLE_DIFFERENCE_LEVELS,
    NoVisibleDefectError,
    PseudoDefectError,
    minimum_defect_pixels,
)
from defectlab.augment.pseudo_defects.cutpaste import CUTPASTE_REFERENCE_IMAGE_SIZE, cutpaste, scar
from defectlab.augment.pseudo_defects.figures import example_grid
from defectlab.augment.pseudo_defects.generator import PseudoDefectGenerator, derive_seed
from defectlab.augment.pseudo_defects.kinds import (
    DEFAULT_KINDS,
    DEFECT_KINDS,
    DefectKind,
    colour_shift,
    local_blur,
    perlin_blend,
    stroke,
)
from defectlab.augment.pseudo_defects.shapes import blob_mask, perlin_mask, perlin_noise
from defectlab.augment.pseudo_defects.transforms import gaussian_blur

__all__ = [
    "CUTPASTE_REFERENCE_IMAGE_SIZE",
    "DEFAULT_KINDS",
    "DEFECT_KINDS",
    "MAX_ATTEMPTS_PER_DEFECT",
    "SMALLEST_SUPPORTED_IMAGE_SIZE",
    "VISIBLE_DIFFERENCE_LEVELS",
    "DefectKind",
    "NoVisibleDefectError",
    "PseudoDefectError",
    "PseudoDefectGenerator",
    "blob_mask",
    "colour_shift",
    "cutpaste",
    "derive_seed",
    "example_grid",
    "gaussian_blur",
    "local_blur",
    "minimum_defect_pixels",
    "perlin_blend",
    "perlin_mask",
    "perlin_noise",
    "scar",
    "stroke",
]
