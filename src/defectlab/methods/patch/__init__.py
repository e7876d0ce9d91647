"""The patch method: PatchCore (Roth et al., CVPR 2022) on a MobileNetV2 backbone, with anomaly maps.

Every good train image is cut into patches described by two intermediate
layers of the backbone (each averaged over a ``patch_size`` neighbourhood,
the deeper one resized to the shallower grid); a greedy k-center coreset of
those patches is the memory bank. A test patch's score is its distance to the
nearest bank patch; the map is those scores upsampled and smoothed, the image
score its maximum (reweighted as in PatchCore). No epochs and no optimiser
unless ``backbone=self``, which trains its backbone in the run.

- `config`: `PatchConfig`;
- `backbone`: the ``backbone`` setting resolved (ImageNet, file, metric run, self, none);
- `features`: the Keras feature extractor and patch aggregation;
- `coreset`: which good patches the bank keeps (greedy k-center, exact or inside k-means parts);
- `search`: the faiss index over the bank (exact, or IVF for large banks);
- `bank`: `PatchMemoryBank` (coreset, index, patch and image scores) and its memory estimate;
- `maps`: patch scores to image-sized, smoothed anomaly maps;
- `arrays`: the input checks these NumPy modules share;
- `detector`: `PatchCoreDetector` (fit, scores and maps, bundle files);
- this module: the method's `METHOD` entry.
"""

from __future__ import annotations

import logging

from defectlab.config import ConfigError
from defectlab.methods.base import FitResult, Method, PreparedRun, onnx_network_export
from defectlab.methods.patch.config import PatchConfig

logger = logging.getLogger(__name__)

LABEL = "Patch (PatchCore)"
GIB = 1024 ** 3
# Layer pairs the search space offers (shallow, deeper), per architecture: the stride-4/8/16 stages.
SEARCHED_FEATURE_LAYERS = {
    "mobilenet_v2": (
        "block_2_add,block_5_add",
        "block_2_add,block_9_add",
        "block_5_add,block_9_add",
        "block_5_add,block_12_add",
    ),
    "efficientnet_lite0": (
        "block_2_add,block_4_add",
        "block_2_add,block_7_add",
        "block_4_add,block_7_add",
        "block_4_add,block_10_add",
    ),
}


def check_layers_and_memory(config: PatchConfig, train_images: int) -> dict:
    """Refuse unknown layers, and a bank that would not fit in ``memory_limit_gib``, before any work.

    Builds an untrained backbone of the same architecture (no weights needed)
    to read the layers' names and output shapes (``backbone=pixels``: its
    window grid). Returns the memory estimate.
    """
    from defectlab.methods.patch.features import PIXEL_STRIDE, PIXEL_WINDOW, feature_layer_names

    if config.backbone == "pixels":
        grid = -(-config.image_size // PIXEL_STRIDE)
        return check_bank_memory(config, train_images, grid, grid, config.feature_dim or PIXEL_WINDOW ** 2 * 3)
    from defectlab.methods.backbones import build_backbone

    probe = build_backbone(config.backbone_arch, config.image_size, config.backbone_alpha)
    valid = feature_layer_names(probe)
    unknown = [name for name in config.layer_names if name not in valid]
    if unknown:
        raise ConfigError(
            f"unknown feature layer(s) {', '.join(unknown)}; {config.backbone_arch} layers with patch grids: "
            f"{', '.join(name for name in valid if name.endswith('_add') or name.endswith('_relu'))}"
        )
    shapes = [probe.get_layer(name).output.shape for name in config.layer_names]
    feature_dim = config.feature_dim or sum(int(shape[-1]) for shape in shapes)
    return check_bank_memory(config, train_images, int(shapes[0][1]), int(shapes[0][2]), feature_dim)


def check_bank_memory(config: PatchConfig, train_images: int, grid_height: int, grid_width: int,
                      feature_dim: int) -> dict:
    """Refuse a bank of ``grid_height x grid_width`` patches per image that would exceed ``memory_limit_gib``."""
    from defectlab.methods.patch.bank import estimate_bank_bytes

    estimate = estimate_bank_bytes(
        train_images, grid_height, grid_width, feature_dim, config.coreset_ratio, search_index=config.search_index,
    )
    needed = (estimate["all_patches_bytes"] + estimate["coreset_selection_bytes"] + estimate["bank_bytes"]
              + estimate["index_bytes"])
    if needed > config.memory_limit_gib * GIB:
        raise ConfigError(
            f"the memory bank would need about {needed / GIB:.1f} GiB ({estimate['n_patches']} patches "
            f"of {feature_dim} features from {train_images} images at {config.image_size} px), more than "
            f"memory_limit_gib={config.memory_limit_gib}; lower image_size, set feature_dim (e.g. 128), "
            "use a shallower feature_layers pair, or raise memory_limit_gib"
        )
    return estimate


def check(config: PatchConfig) -> None:
    """faiss, and a backbone weights file or ImageNet download, before any data is loaded (the rest needs the data)."""
    from defectlab.methods.patch.backbone import check_weights_backbone
    from defectlab.methods.patch.search import FaissMissingError, import_faiss

    try:
        import_faiss()
    except FaissMissingError as error:
        raise ConfigError(str(error)) from None
    check_weights_backbone(config)


def prepare(config: PatchConfig, dataset) -> PreparedRun:
    """Check the backbone, the layers and the bank's memory; return the fit to run."""
    from defectlab import tracking
    from defectlab.methods.patch.backbone import resolve_backbone

    train_images = int(dataset.rows("train").sum())
    estimate = check_layers_and_memory(config, train_images)
    source = resolve_backbone(config, dataset)

    def fit(epoch_callbacks: list) -> FitResult:
        from defectlab.methods.patch.detector import PatchCoreDetector
        from defectlab.tracking.callbacks import EpochMetricsLogger

        with tracking.Stopwatch() as train_watch:
            callbacks = [EpochMetricsLogger(), *epoch_callbacks] if source.trains else []
            extractor = source.extractor(callbacks, config.layer_names)
        with tracking.Stopwatch() as fit_watch:
            detector = PatchCoreDetector(
                extractor, patch_size=source.patch_size(config.patch_size), feature_dim=config.feature_dim,
                coreset_ratio=config.coreset_ratio, patch_neighbors=config.patch_neighbors,
                map_sigma=config.map_sigma, seed=config.seed, batch_size=config.batch_size, search_index=config.search_index,
            ).fit(dataset.images_of("train"))
        total_seconds = train_watch.seconds + fit_watch.seconds
        return FitResult(
            detector=detector,
            keras_model=extractor,
            metrics={
                "fit_seconds": fit_watch.seconds,
                "backbone_train_seconds": train_watch.seconds,
                "train_seconds": total_seconds,
                "train_images_per_second": train_images / max(total_seconds, 1e-9),
                "memory_bank_patches": len(detector.memory_bank_.bank_),
                "memory_bank_bytes": detector.bank_bytes,
                "memory_bank_patches_before_coreset": detector.memory_bank_.n_patches_seen_,
                "extract_seconds": detector.extract_seconds_,
                "coreset_seconds": detector.memory_bank_.coreset_seconds_,
                "index_seconds": detector.memory_bank_.index_seconds_,
            },
        )

    logger.info(
        "patch method: %d good patches (%.0f MiB) before the coreset, %d kept",
        estimate["n_patches"], estimate["all_patches_bytes"] / 2 ** 20, estimate["n_bank_patches"],
    )
    return PreparedRun(tags=source.tags, fit=fit)


def load_detector(folder, description):
    from defectlab.methods.patch.detector import PatchCoreDetector

    return PatchCoreDetector.load(folder, description)


def search_space(backbone_arch: str = "mobilenet_v2") -> dict:
    """The bank's settings: coreset size, feature layers, patch size, reweighting, map smoothing, image size.

    ``patch_size`` reaches 7 (and ``image_size`` offers 192 between 160 and
    224): on the real magnetic tiles a study on the val split chose 7 at 160 px
    over PatchCore's 3 at 224 px (docs/benchmarks.md), so the neighbourhood
    that suits a dataset is one for its study to find, not a default. The
    maps' smoothing (``map_sigma``, PatchCore's 4 px at 224) is searched from
    half to eight times PatchCore's for the same reason: wider blurs scored
    higher on the tiles, on val and test alike (docs/benchmarks.md).
    """
    return {
        "coreset_ratio": {"type": "float", "low": 0.01, "high": 0.25, "log": True},
        "feature_layers": {"type": "categorical", "choices": list(SEARCHED_FEATURE_LAYERS[backbone_arch])},
        "patch_size": {"type": "int", "low": 1, "high": 7, "step": 2},
        "patch_neighbors": {"type": "int", "low": 1, "high": 9},
        "map_sigma": {"type": "categorical", "choices": [2.0, 4.0, 8.0, 16.0, 32.0]},
        "image_size": {"type": "categorical", "choices": [64, 96, 128, 160, 192, 224]},
    }


def default_search_space(config: PatchConfig, data_root) -> dict:
    return search_space(config.backbone_arch)


METHOD = Method(
    name="patch",
    tag="patch",
    label=LABEL,
    summary=(
        "PatchCore-style patch method: memory bank of local features, anomaly maps, log everything."
    ),
    config_class=PatchConfig,
    makes_maps=True,
    prepare=prepare,
    load_detector=load_detector,
    default_search_space=default_search_space,
    check=check,
    onnx_export=onnx_network_export(load_detector),
)

__all__ = ["METHOD", "PatchConfig"]
