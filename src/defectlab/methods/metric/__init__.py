"""L2-softmax metric learning (the article's method): MobileNetV2 trained to tell the target
category from reference images, its pooled embeddings scored by LocalOutlierFactor.

- `config`: `MetricConfig`;
- `network`: the classifier and its embedding model;
- `training`: reference set, training loop;
- `detector`: `EmbeddingLOFDetector` (also the exported detector, on ONNX networks);
- this module: the method's `METHOD` entry (prepare, fit, score, search space, pruning).
"""

from __future__ import annotations

import logging

from defectlab.methods.base import FitResult, Method, PreparedRun, onnx_network_export, RunScores
from defectlab.methods.metric.config import MetricConfig

logger = logging.getLogger(__name__)

# Measured on a 2-core CPU (MobileNetV2 alpha 0.5): ~36 img/s at 224 px; cost grows with pixels.
CPU_IMAGES_PER_SECOND_AT_224 = 36.0
LONG_CPU_RUN_SECONDS = 30 * 60
LABEL = "L2-softmax"
ENSEMBLE_LABEL = "L2-softmax ensemble"
PSEUDO_DEFECTS_LABEL = "L2-softmax + pseudo-defects"


def estimated_cpu_training_seconds(config: MetricConfig, training_images: int) -> float:
    """Rough CPU training time, from the measured 224 px throughput scaled by pixel count."""
    images_per_second = CPU_IMAGES_PER_SECOND_AT_224 * (224.0 / config.image_size) ** 2
    return config.ensemble * config.epochs * training_images / images_per_second


def check(config: MetricConfig) -> None:
    """The weights, before any data is loaded: ImageNet cached or downloadable, or a real weights file."""
    from defectlab.methods.backbones import resolve_backbone_weights

    resolve_backbone_weights(
        config.weights, config.backbone_alpha, config.image_size, backbone_arch=config.backbone_arch
    )


def prepare(config: MetricConfig, dataset) -> PreparedRun:
    """Check the reference set and the weights (before any run exists); return the fit to run."""
    from defectlab import tracking
    from defectlab.methods.backbones import resolve_backbone_weights
    from defectlab.methods.metric import training
    from defectlab.methods.keras_training import accelerator

    references = training.load_reference_set(
        dataset.root, config.category, config.image_size,
        reference_size=config.reference_size, reference_dir=config.reference_dir, seed=config.seed,
        pseudo_defects=config.pseudo_defects, resize=config.resize,
    )
    if config.pseudo_defects:
        from defectlab.augment.pseudo_defects import PseudoDefectGenerator

        # Image size and dtype checked now, not inside the tf.data pipeline mid-training.
        PseudoDefectGenerator(seed=config.seed).check_images(dataset.images_of("train")[:1])
    weights_path, weights_tag, weights_source = resolve_backbone_weights(
        config.weights, config.backbone_alpha, config.image_size, backbone_arch=config.backbone_arch
    )
    training_images = int(dataset.rows("train").sum()) + len(references.images) + config.pseudo_defects
    if accelerator() == "CPU":
        estimate = estimated_cpu_training_seconds(config, training_images)
        if estimate > LONG_CPU_RUN_SECONDS:
            logger.warning(
                "no GPU: training %d images x %d epochs x %d model(s) at %d px will take about "
                "%.1f hours on this CPU; for a quick run pass e.g. image_size=96 epochs=3 "
                "batch_size=32", training_images, config.epochs, config.ensemble,
                config.image_size, estimate / 3600,
            )
    elif config.mixed_precision:
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16")

    def fit(epoch_callbacks: list) -> FitResult:
        from defectlab.methods.metric.network import embedding_model
        from defectlab.tracking.callbacks import EpochMetricsLogger

        good_train_images = dataset.images_of("train")
        embedders, figures = [], {}
        if config.pseudo_defects:
            figures["training/pseudo_defects.png"] = training.pseudo_defect_examples_figure(
                good_train_images, references.images if len(references.images) else None, config.seed
            )
        with tracking.Stopwatch() as train_watch:
            for member_index in range(config.ensemble):
                prefix = "" if member_index == 0 else f"member_{member_index}_"
                classifier, _ = training.train_l2_softmax(
                    good_train_images, references, config, weights_path,
                    seed=config.seed + member_index,
                    callbacks=[EpochMetricsLogger(prefix), *epoch_callbacks],
                )
                embedders.append(embedding_model(classifier))
            detector = training.EmbeddingLOFDetector(
                embedders, lof_neighbors=config.lof_neighbors
            ).fit(good_train_images, dataset.images_of("threshold"))
        return FitResult(
            detector=detector,
            keras_model=classifier if config.ensemble == 1 else detector.ensemble_model(),
            metrics={
                "train_seconds": train_watch.seconds,
                "train_images_per_second": (
                    config.ensemble * config.epochs * training_images / train_watch.seconds
                ),
            },
            figures=figures,
        )

    tags = {"weights": weights_tag, "backbone_arch": config.backbone_arch, "weights_source": weights_source}
    return PreparedRun(tags=tags, fit=fit, ensemble_size=config.ensemble)


def score_run(detector, images, evaluate_scores) -> RunScores:
    """The ensemble's scores, plus ``member_<k>_test_image_auroc`` of each member when there are several."""
    member_scores = detector.member_scores(images)
    metrics = {}
    if detector.ensemble_size > 1:
        for member_index, raw_scores in enumerate(member_scores):
            metrics[f"member_{member_index}_test_image_auroc"] = evaluate_scores(raw_scores)[
                "test_image_auroc"
            ]
    return RunScores(detector.combine(member_scores), None, metrics)


def load_detector(folder, description):
    from defectlab.methods.metric.detector import EmbeddingLOFDetector

    return EmbeddingLOFDetector.load(folder, description)


def search_space(available_reference_images: int, reference_dir: str = "") -> dict:
    """The settings the article calls sensitive: epochs, optimiser and its learning rate, the
    size of the reference set; and the pseudo-defect images per epoch (the offline-competence knob).

    The reference set needs at least one image for a second softmax class unless
    ``reference_dir`` provides one.
    """
    space = {
        "epochs": {"type": "int", "low": 2, "high": 100, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    }
    lowest = 0 if reference_dir else 1
    if available_reference_images > lowest:
        space["reference_size"] = {
            "type": "int", "low": lowest, "high": available_reference_images, "log": lowest > 0,
        }
    space["pseudo_defects"] = {"type": "int", "low": 0, "high": 256, "step": 32}
    return space


def default_search_space(config: MetricConfig, data_root) -> dict:
    """`search_space` for the reference images the dataset at ``data_root`` has."""
    from defectlab.methods.metric.training import reference_paths

    pools = reference_paths(data_root, config.category, -1, "", config.seed)
    return search_space(sum(len(paths) for paths in pools.values()), config.reference_dir)


def pruning_scorer(dataset, config: MetricConfig):
    """``classifier -> val_image_auroc``: LOF on the classifier's embeddings of the good train images."""
    from defectlab.evaluation.metrics import image_auroc
    from defectlab.methods.metric.network import embedding_model
    from defectlab.methods.metric.training import embed
    from defectlab.methods.scorers import LOFScorer

    val_rows = dataset.rows("val")
    val_labels = dataset.table["label"].to_numpy()[val_rows]
    val_images = dataset.images[val_rows]
    good_train_images = dataset.images_of("train")
    # One embedding model per network in training: Keras traces a model's predict
    # function at its first call (seconds on a CPU), so a new one per scoring costs that each time.
    embedder_of = {"classifier": None, "embedder": None}

    def score(classifier) -> float:
        if embedder_of["classifier"] is not classifier:
            embedder_of.update(classifier=classifier, embedder=embedding_model(classifier))
        embedder = embedder_of["embedder"]
        scorer = LOFScorer(config.lof_neighbors).fit(embed(embedder, good_train_images))
        return image_auroc(val_labels, scorer.anomaly_score(embed(embedder, val_images)))

    return score


def run_label(tags: dict, params: dict) -> str:
    """An ensemble's size is part of its name; the pseudo-defect variant is its own box."""
    try:
        ensemble_size = int(float(tags.get("ensemble_size") or params.get("ensemble") or 1))
    except ValueError:
        ensemble_size = 1
    try:
        pseudo_defects = int(float(params.get("pseudo_defects") or 0))
    except ValueError:
        pseudo_defects = 0
    label = PSEUDO_DEFECTS_LABEL if pseudo_defects > 0 else LABEL
    if ensemble_size > 1:
        label = f"{ENSEMBLE_LABEL if pseudo_defects == 0 else label + ' ensemble'} of {ensemble_size}"
    return label


METHOD = Method(
    name="metric",
    tag="l2_softmax",
    label=LABEL,
    summary="Train L2-softmax metric learning on one category, score with LOF, log everything.",
    config_class=MetricConfig,
    makes_maps=False,
    prepare=prepare,
    load_detector=load_detector,
    default_search_space=default_search_space,
    pruning_scorer=pruning_scorer,
    score_run=score_run,
    run_label=run_label,
    check=check,
    onnx_export=onnx_network_export(load_detector),
)

__all__ = ["METHOD", "MetricConfig"]
