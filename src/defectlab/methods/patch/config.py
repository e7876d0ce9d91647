"""Settings of the patch method (PatchCore-style memory bank of local features)."""

from __future__ import annotations

from dataclasses import dataclass

from defectlab.config import ConfigError, RunConfig

BACKBONE_CHOICES = (
    "imagenet, none, self, pixels, run:<run_id>, models:/<name>@<alias>, models:/<name>/<version> or a weights file"
)
DEFAULT_FEATURE_LAYERS = "block_2_add,block_5_add"


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
    ``feature_layers`` are two (or more) comma-separated MobileNetV2 layer names,
    shallow first. ``feature_dim`` 0 keeps every channel. ``memory_limit_gib``
    bounds the memory of all training patches (checked before extracting).
    The ``self_*`` settings only apply to ``backbone=self``.
    """

    image_size: int = 224
    backbone: str = "imagenet"
    backbone_alpha: float = 0.5
    feature_layers: str = DEFAULT_FEATURE_LAYERS
    patch_size: int = 3
    feature_dim: int = 0
    coreset_ratio: float = 0.1
    patch_neighbors: int = 9
    batch_size: int = 32
    memory_limit_gib: float = 4.0
    self_epochs: int = 10
    self_pseudo_defects: int = 256
    self_learning_rate: float = 0.01

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.feature_layers.split(",") if name.strip())

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        super().validate()
        if not self.backbone:
            raise ConfigError(f"backbone must be one of {BACKBONE_CHOICES}")
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
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.memory_limit_gib > 0:
            raise ConfigError(f"memory_limit_gib must be positive, got {self.memory_limit_gib}")
        if self.self_epochs < 1:
            raise ConfigError(f"self_epochs must be at least 1, got {self.self_epochs}")
        if self.self_pseudo_defects < 1:
            raise ConfigError(f"self_pseudo_defects must be at least 1, got {self.self_pseudo_defects}")
        if not self.self_learning_rate > 0:
            raise ConfigError(f"self_learning_rate must be positive, got {self.self_learning_rate}")
