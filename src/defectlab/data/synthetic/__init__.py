"""A built-in, deterministic dataset in the layout and spirit of MVTec AD.

The real MVTec AD cannot be downloaded everywhere defectlab runs (tests, CI,
machines without network), so this package renders a stand-in with the four
categories of the article: two textures (carpet, leather) and two objects
(cable, capsule), each with the defect types MVTec AD names.

Every image is drawn from signed-distance fields and filtered noise in NumPy,
so any image size works and the same :class:`SyntheticSpec` always yields
byte-identical PNG files. Defects range from obvious to subtle; good images
vary in texture, part colours and print, and slightly in pose and lighting (as
on an inspection fixture). A plain baseline, PCA on 64 px pixels with a Local
Outlier Factor, separates defects from good images only partly (image AUROC
about 0.65 to 0.9 per category): the set is a test a method can pass or fail,
not a toy.

A defect's ground-truth mask is where its image differs from the same image
rendered without the defect (before lighting and sensor noise), so a mask is
non-empty exactly where the defect changed the picture.

The modules, each importing only those listed before it: ``categories`` (the
categories and their defect types), ``primitives`` (drawing primitives and
noise), ``camera`` (lighting and sensor noise), ``textures`` (carpet and
leather), ``objects`` (cable and capsule), ``defects`` (the defect renderers),
``sample`` (``render_sample``: one image and its mask) and ``writer`` (the
spec, split counts, writing and caching the dataset). This package re-exports
their public names.

Examples
--------
>>> from defectlab.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
>>> root = ensure_synthetic_dataset(SyntheticSpec(image_size=64, count_scale=0.1), cache_dir="/tmp/defectlab-cache")
>>> sorted(p.name for p in root.iterdir() if p.is_dir())
['cable', 'capsule', 'carpet', 'leather']
"""

from defectlab.data.synthetic.categories import CATEGORY_DEFECT_TYPES, OBJECT_CATEGORIES, TEXTURE_CATEGORIES
from defectlab.data.synthetic.sample import render_sample
from defectlab.data.synthetic.writer import (
    GENERATOR_VERSION,
    SyntheticSpec,
    default_cache_dir,
    ensure_synthetic_dataset,
    generate_dataset,
    split_counts,
)

__all__ = [
    "CATEGORY_DEFECT_TYPES",
    "GENERATOR_VERSION",
    "OBJECT_CATEGORIES",
    "TEXTURE_CATEGORIES",
    "SyntheticSpec",
    "default_cache_dir",
    "ensure_synthetic_dataset",
    "generate_dataset",
    "render_sample",
    "split_counts",
]
