"""Settings of L2-softmax metric learning (MobileNetV2 + LocalOutlierFactor)."""

from __future__ import annotations

from dataclasses import dataclass

from defectlab.config import ConfigError, TrainedConfig


@dataclass(frozen=True)
class MetricConfig(TrainedConfig):
    """L2-softmax metric learning: the article's recipe, plus an optional pseudo-defect class.

    ``pseudo_defects`` synthesised-defect images of the target (made per epoch
    from its own good images) join the reference set as one more class; 0 is
    the article's recipe. ``backbone_arch`` is ``mobilenet_v2`` (the article's) or
    ``efficientnet_lite0`` (ImageNet weights from the ``defectlab[pretrained]``
    extra; ``backbone_alpha`` applies to MobileNetV2 only).
    """

    image_size: int = 224
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    backbone_arch: str = "mobilenet_v2"
    backbone_alpha: float = 0.5
    weights: str = "imagenet"
    softmax_scale: float = 16.0
    reference_size: int = -1
    reference_dir: str = ""
    pseudo_defects: int = 0
    lof_neighbors: int = 5
    ensemble: int = 1
    mixed_precision: bool = False

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        super().validate()
        from defectlab.methods.backbones import check_backbone_arch

        check_backbone_arch(self.backbone_arch)
        if self.backbone_alpha <= 0:
            raise ConfigError(f"backbone_alpha must be positive, got {self.backbone_alpha}")
        if self.softmax_scale <= 0:
            raise ConfigError(f"softmax_scale must be positive, got {self.softmax_scale}")
        if self.reference_size < -1:
            raise ConfigError(
                f"reference_size must be -1 (all) or a count >= 0, got {self.reference_size}"
            )
        if self.pseudo_defects < 0:
            raise ConfigError(
                f"pseudo_defects must be 0 (the article's recipe) or a count of images per "
                f"epoch, got {self.pseudo_defects}"
            )
        if self.lof_neighbors < 1:
            raise ConfigError(f"lof_neighbors must be at least 1, got {self.lof_neighbors}")
        if self.ensemble < 1:
            raise ConfigError(f"ensemble must be at least 1, got {self.ensemble}")
        if not self.weights:
            raise ConfigError("weights must be 'imagenet', 'none' or a path to a weights file")
