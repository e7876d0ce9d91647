"""Settings of the patch method (PatchCore-style memory bank of local features)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from defectlab.config import ConfigError, RunConfig

# The patch method's search indexes (defectlab.methods.patch.search, which imports faiss).
SEARCH_INDEX_CHOICES = ("auto", "exact", "ivf")

BACKBONE_CHOICES = (
    "imagenet, none, self, pixels, run:<run_id>, models:/<name>@<alias>, models:/<name>/<version> or a weights file"
)
# feature_layers=auto: the pair for the backbone's weights.
AUTO_FEATURE_LAYERS = "auto"
# Without pretrained weights (backbone none, self, a metric run). Chosen by measurement:
# random-init MobileNetV2 (alpha 0.5, seeds 0 and 1) at 96 px on the synthetic carpet,
# leather, cable and capsule categories (val + test), patch_size 3, coreset 0.1. Mean
# image / pixel AUROC:
#   block_2_add + block_5_add    0.973 / 0.988 (seed 0), 0.972 / 0.987 (seed 1)
#   block_2_add + block_12_add   0.973 / 0.988,          0.976 / 0.986
#   block_5_add + block_9_add    0.935 / 0.971,          0.941 / 0.964
# Every pair with the stride-4 block_2_add ties (without weights each deeper stage's
# activations are ~20x smaller, so the shallow layer dominates the distances); this one
# is the cheapest (32 channels).
RANDOM_FEATURE_LAYERS = "block_2_add,block_5_add"
# With ImageNet weights (backbone imagenet or a weights file): the ends of the stride-8
# and stride-16 stages, as PatchCore's layer2 + layer3. Measured on the real magnetic
# tiles (209 train, 354 test images, 224 px, MobileNetV2 1.0, coreset 0.1, exact search):
#   block_5_add + block_12_add   image / pixel AUROC 0.807 / 0.804, 164,000 patches
#   block_2_add + block_5_add    0.664 / 0.714, 655,000 patches (4x the fit and search)
# With ImageNet weights the deeper layer is informative, and the stride-4 layer's small
# receptive field sees texture grain rather than defects at 224 px.
PRETRAINED_FEATURE_LAYERS = "block_5_add,block_12_add"
# EfficientNet-Lite0 (backbone_arch=efficientnet_lite0): the same stage ends by stride,
# stride 8 (40 channels) and 16 (112); without weights stride 4 (24) and 8.
EFFICIENTNET_PRETRAINED_FEATURE_LAYERS = "block_4_add,block_10_add"
EFFICIENTNET_RANDOM_FEATURE_LAYERS = "block_2_add,block_4_add"
# backbone_arch -> (the pair with pretrained weights, the pair without).
AUTO_FEATURE_LAYER_PAIRS = {
    "mobilenet_v2": (PRETRAINED_FEATURE_LAYERS, RANDOM_FEATURE_LAYERS),
    "efficientnet_lite0": (EFFICIENTNET_PRETRAINED_FEATURE_LAYERS, EFFICIENTNET_RANDOM_FEATURE_LAYERS),
}


@dataclass(frozen=True)
class PatchConfig(RunConfig):
    """PatchCore (Roth et al., CVPR 2022) on a MobileNetV2 backbone.

    ``backbone`` says where the backbone's weights come from: ``imagenet``
    (Keras's ImageNet weights), ``none`` (seeded random initialisation:
    no download; measured strong on the built-in dataset, unproven on real photographs), ``self`` (an L2-softmax network trained in the run to tell the
    target's good images from synthesised defects of them and from the
    reference images; no download), ``pixels`` (no network: each 6 x 6 window
    of raw RGB values at stride 2 is a patch; ``feature_layers`` and
    ``patch_size`` do not apply; measured best offline on real photographs),
    ``run:<run_id>`` or ``models:/<name>@<alias>``
    (the network of a finished L2-softmax run), or a path to a weights file.
    ``backbone_arch`` is ``mobilenet_v2`` or ``efficientnet_lite0`` (ImageNet
    weights from the ``defectlab[pretrained]`` extra; ``backbone_alpha`` applies
    to MobileNetV2 only). ``feature_layers`` are two (or more) comma-separated
    layer names of that architecture, shallow first, or ``auto``: the ends of the
    stride-8 and stride-16 stages with ImageNet weights or a weights file
    (`PRETRAINED_FEATURE_LAYERS`), of the stride-4 and stride-8 stages otherwise. ``feature_dim`` 0 keeps every channel. ``memory_limit_gib``
    bounds the memory of all training patches (checked before extracting).
    ``search_index`` says how the bank is searched: ``exact`` (faiss's flat
    index), ``ivf`` (an approximate inverted-file index; a bank too small to
    train one is searched exactly, with a note) or ``auto`` (IVF for large banks).
    ``map_sigma`` is the Gaussian smoothing of the anomaly maps, in pixels of a
    224 px image and scaled with ``image_size`` (PatchCore's 4; 0: none); the
    image score is the smoothed map's maximum, so it moves both figures.
    The ``self_*`` settings only apply to ``backbone=self``.
    """

    image_size: int = 224
    backbone: str = "imagenet"
    backbone_arch: str = "mobilenet_v2"
    backbone_alpha: float = 0.5
    feature_layers: str = AUTO_FEATURE_LAYERS
    patch_size: int = 3
    feature_dim: int = 0
    coreset_ratio: float = 0.1
    patch_neighbors: int = 9
    map_sigma: float = 4.0
    batch_size: int = 32
    memory_limit_gib: float = 4.0
    search_index: str = "auto"
    self_epochs: int = 10
    self_pseudo_defects: int = 256
    self_learning_rate: float = 0.01

    @property
    def pretrained(self) -> bool:
        """Whether ``backbone`` names pretrained weights: ``imagenet`` or a weights file."""
        return self.backbone not in ("none", "self", "pixels") and not self.backbone.startswith(("run:", "models:/"))

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The feature layers, ``auto`` resolved for the backbone."""
        layers = self.feature_layers
        if layers.strip() == AUTO_FEATURE_LAYERS:
            pretrained_pair, random_pair = AUTO_FEATURE_LAYER_PAIRS[self.backbone_arch]
            layers = pretrained_pair if self.pretrained else random_pair
        return tuple(name.strip() for name in layers.split(",") if name.strip())

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        super().validate()
        if not self.backbone:
            raise ConfigError(f"backbone must be one of {BACKBONE_CHOICES}")
        from defectlab.methods.backbones import check_backbone_arch

        check_backbone_arch(self.backbone_arch)
        if self.backbone_alpha <= 0:
            raise ConfigError(f"backbone_alpha must be positive, got {self.backbone_alpha}")
        if len(self.layer_names) < 1:
            raise ConfigError("feature_layers must name at least one layer, e.g. block_2_add,block_5_add")
        if len(set(self.layer_names)) != len(self.layer_names):
            raise ConfigError(f"feature_layers names a layer twice: {self.feature_layers!r}")
        if self.patch_size < 1:
            raise ConfigError(f"patch_size must be at least 1, got {self.patch_size}")
        if self.feature_dim < 0:
            raise ConfigError(f"feature_dim must be 0 (all channels) or positive, got {self.feature_dim}")
        if not 0 < self.coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.patch_neighbors < 1:
            raise ConfigError(f"patch_neighbors must be at least 1, got {self.patch_neighbors}")
        if not (math.isfinite(self.map_sigma) and self.map_sigma >= 0):
            raise ConfigError(f"map_sigma must be 0 (no smoothing) or a positive number of pixels, got {self.map_sigma}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.search_index not in SEARCH_INDEX_CHOICES:
            raise ConfigError(
                f"search_index must be one of {', '.join(SEARCH_INDEX_CHOICES)}, got {self.search_index!r}"
            )
        if not self.memory_limit_gib > 0:
            raise ConfigError(f"memory_limit_gib must be positive, got {self.memory_limit_gib}")
        if self.self_epochs < 1:
            raise ConfigError(f"self_epochs must be at least 1, got {self.self_epochs}")
        if self.self_pseudo_defects < 1:
            raise ConfigError(f"self_pseudo_defects must be at least 1, got {self.self_pseudo_defects}")
        if not self.self_learning_rate > 0:
            raise ConfigError(f"self_learning_rate must be positive, got {self.self_learning_rate}")
