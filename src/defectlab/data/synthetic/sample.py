"""One sample: the table of category renderers and ``render_sample``, which draws an image and its mask.

``_RENDERERS`` pairs each category's scene, render and defect functions with
its lighting and noise levels. ``render_sample`` draws the good scene and the
camera from the base seed, then the defect from the defect seed, and takes as
ground truth where the defect changed the albedo by more than
``_MASK_THRESHOLD``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from defectlab.data.synthetic.camera import _Camera
from defectlab.data.synthetic.categories import CATEGORY_DEFECT_TYPES, _check_category
from defectlab.data.synthetic.defects import _cable_defect, _capsule_defect, _carpet_defect, _leather_defect
from defectlab.data.synthetic.objects import _cable_albedo, _cable_scene, _capsule_albedo, _capsule_scene
from defectlab.data.synthetic.textures import _carpet_albedo, _leather_albedo


# A pixel belongs to a defect mask when the defect changed its albedo by more
# than this (on a 0..1 scale, about 5 grey levels): smaller changes are
# antialiasing residue nobody would annotate.
_MASK_THRESHOLD = 0.02


@dataclass(frozen=True)
class _CategoryRenderer:
    draw_scene: Callable  # (base_rng, size) -> scene
    render: Callable  # (scene, size) -> albedo
    apply_defect: Callable  # (scene, defect_rng, defect_type, size) -> None, edits scene in place
    copy_scene: Callable
    lighting_variation: float
    noise_level: float


def _texture_renderer(make_albedo, apply_defect, lighting_variation, noise_level) -> _CategoryRenderer:
    # For textures the scene is the albedo itself; a defect paints on a copy.
    return _CategoryRenderer(
        draw_scene=make_albedo,
        render=lambda albedo, size: albedo,
        apply_defect=apply_defect,
        copy_scene=np.copy,
        lighting_variation=lighting_variation,
        noise_level=noise_level,
    )


def _object_renderer(draw_scene, render, apply_defect, lighting_variation, noise_level) -> _CategoryRenderer:
    return _CategoryRenderer(draw_scene, render, apply_defect, dict.copy, lighting_variation, noise_level)


# Lighting varies little, as under the fixed lights of an inspection station:
# at 64 px a few percent of brightness outweigh most defects for pixel-space
# baselines (PCA + LOF on pixels lands between about 0.65 and 0.9 image AUROC
# per category with these settings; stronger lighting drives it to chance).
_RENDERERS = {
    "carpet": _texture_renderer(_carpet_albedo, _carpet_defect, lighting_variation=0.15, noise_level=0.015),
    "leather": _texture_renderer(_leather_albedo, _leather_defect, lighting_variation=0.08, noise_level=0.012),
    "cable": _object_renderer(_cable_scene, _cable_albedo, _cable_defect, lighting_variation=0.05, noise_level=0.012),
    "capsule": _object_renderer(_capsule_scene, _capsule_albedo, _capsule_defect, lighting_variation=0.05, noise_level=0.01),
}


def render_sample(
    category: str,
    image_size: int,
    base_seed: Sequence[int],
    defect_type: str | None = None,
    defect_seed: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image, with or without a defect.

    The defect-free content depends only on ``base_seed``, so rendering the
    same ``base_seed`` with and without a defect gives two images that differ
    only inside the returned mask.

    Parameters
    ----------
    category : str
        One of ``CATEGORY_DEFECT_TYPES``.
    image_size : int
        Side of the square image in pixels.
    base_seed : sequence of int
        Seeds the good content: texture or pose, lighting and sensor noise.
    defect_type : str or None
        A defect type of ``category``; None renders a good image.
    defect_seed : sequence of int or None
        Seeds the defect's place, size and strength; required with ``defect_type``.

    Returns
    -------
    image : ndarray of uint8, shape (image_size, image_size, 3)
        RGB image.
    mask : ndarray of uint8, shape (image_size, image_size), or None
        0/255 ground truth of the defect, never empty; None for a good image.
    """
    _check_category(category)
    renderer = _RENDERERS[category]
    base_rng = np.random.default_rng(list(base_seed))
    # Draw everything of the good image first, so that the defect's own
    # random stream cannot shift it.
    scene = renderer.draw_scene(base_rng, image_size)
    camera = _Camera.draw(base_rng, image_size, renderer.lighting_variation, renderer.noise_level)
    good_albedo = renderer.render(scene, image_size)
    if defect_type is None:
        return camera.expose(good_albedo), None
    if defect_type not in CATEGORY_DEFECT_TYPES[category]:
        known = ", ".join(CATEGORY_DEFECT_TYPES[category])
        raise ValueError(f"unknown defect type {defect_type!r} for {category}; known: {known}")
    if defect_seed is None:
        raise ValueError("defect_seed is required when defect_type is given")
    defect_rng = np.random.default_rng(list(defect_seed))
    # A defect drawn too faint or too small for this image size would leave an
    # empty mask; draw again (deterministically) until it shows.
    minimum_pixels = max(3, (image_size // 64) ** 2 * 3)
    for _ in range(20):
        defective_scene = renderer.copy_scene(scene)
        renderer.apply_defect(defective_scene, defect_rng, defect_type, image_size)
        defective_albedo = renderer.render(defective_scene, image_size)
        changed = np.abs(defective_albedo - good_albedo).max(axis=-1) > _MASK_THRESHOLD
        if changed.sum() >= minimum_pixels:
            break
    else:
        raise RuntimeError(f"could not draw a visible {category}/{defect_type} defect at {image_size} px")
    # Outside the mask the defect may leave sub-threshold residue; restore the
    # good pixels there so the mask covers every change.
    defective_albedo = np.where(changed[..., None], defective_albedo, good_albedo)
    return camera.expose(defective_albedo), changed.astype(np.uint8) * 255
