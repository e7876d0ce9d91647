"""The four categories of the built-in dataset and the defect types of each.

``CATEGORY_DEFECT_TYPES`` names the defect types MVTec AD uses per category;
``TEXTURE_CATEGORIES`` and ``OBJECT_CATEGORIES`` split the categories by kind,
and ``_check_category`` rejects any other name. Everything else in the package
reads its category names from here.
"""

from __future__ import annotations


CATEGORY_DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "carpet": ("color", "cut", "hole", "metal_contamination", "thread"),
    "leather": ("color", "cut", "fold", "glue", "poke"),
    "cable": (
        "bent_wire",
        "cable_swap",
        "combined",
        "cut_inner_insulation",
        "cut_outer_insulation",
        "missing_cable",
        "missing_wire",
        "poke_insulation",
    ),
    "capsule": ("crack", "faulty_imprint", "poke", "scratch", "squeeze"),
}
TEXTURE_CATEGORIES = ("carpet", "leather")
OBJECT_CATEGORIES = ("cable", "capsule")


def _check_category(category: str) -> None:
    if category not in CATEGORY_DEFECT_TYPES:
        known = ", ".join(CATEGORY_DEFECT_TYPES)
        raise ValueError(f"unknown synthetic category {category!r}; known categories: {known}")
