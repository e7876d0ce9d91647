"""One tracked training run per method: validate, load, train, score, evaluate, log.

``run_metric`` / ``run_ssim`` are what ``defectlab metric`` / ``defectlab ssim``
(and ``mlflow run . -e metric`` / ``-e ssim``) call. The method-specific part
(training and scoring) is in ``metric_learning`` and ``autoencoder``; the
evaluation, logging, bundling and registering are one shared tail
(`finish_training_run`, over ``evaluation`` and ``tracking``).
``run_evaluate`` (``defectlab evaluate``) scores an already logged detector
and logs its run through the same ``evaluation`` and ``tracking`` path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from defectlab import data, evaluation, tracking
from defectlab.config import EvaluateConfig, MetricConfig, SSIMConfig

logger = logging.getLogger(__name__)

# Measured on a 2-core CPU (MobileNetV2 alpha 0.5): ~36 img/s at 224 px; cost grows with pixels.
CPU_IMAGES_PER_SECOND_AT_224 = 36.0
LONG_CPU_RUN_SECONDS = 30 * 60


@dataclass(frozen=True)
class RunResult:
    """What a finished training run produced."""

    run_id: str
    metrics: dict
    detector_uri: str
    model_version: str | None = None


def accelerator() -> str:
    """``GPU`` when TensorFlow sees one, else ``CPU``."""
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def estimated_cpu_training_seconds(config: MetricConfig, training_images: int) -> float:
    """Rough CPU training time, from the measured 224 px throughput scaled by pixel count."""
    images_per_second = CPU_IMAGES_PER_SECOND_AT_224 * (224.0 / config.image_size) ** 2
    return config.ensemble * config.epochs * training_images / images_per_second


def metric_tags(config: MetricConfig, dataset: data.CategoryData, weights_tag: str, device: str) -> dict:
    return {
        "method": config.method,
        "category": config.category,
        "dataset": dataset.dataset_name,
        "ensemble_size": config.ensemble,
        "weights": weights_tag,
        "image_size": config.image_size,
        "device": device,
    }


def run_metric(config: MetricConfig, run_name: str | None = None, nested: bool = False,
               epoch_callbacks: list | None = None) -> RunResult:
    """Train, score, evaluate and log one L2-softmax run (an ensemble of ``config.ensemble`` models).

    Everything that can be checked is checked before training: the settings,
    the dataset and its splits, the reference set, the weights, the tracking server.
    """
    from defectlab import metric_learning
    from defectlab.models import embedding_model, resolve_backbone_weights

    # Checks that need no training
    config.validate()
    tracking.check_tracking_server()
    dataset = data.load_category(
        config.data_dir, config.category, config.image_size, grayscale=False, seed=config.seed
    )
    references = metric_learning.load_reference_set(
        dataset.root, config.category, config.image_size,
        reference_size=config.reference_size, reference_dir=config.reference_dir, seed=config.seed,
    )
    weights_path, weights_tag = resolve_backbone_weights(
        config.weights, config.backbone_alpha, config.image_size
    )
    device = accelerator()
    training_images = int(dataset.rows("train").sum()) + len(references.images)
    if device == "CPU":
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

    with tracking.training_run(
        config, metric_tags(config, dataset, weights_tag, device), run_name=run_name, nested=nested
    ) as run:
        good_train_images = dataset.images_of("train")
        embedders, good_embeddings = [], []
        with tracking.Stopwatch() as train_watch:
            for member_index in range(config.ensemble):
                prefix = "" if member_index == 0 else f"member_{member_index}_"
                classifier, _ = metric_learning.train_l2_softmax(
                    good_train_images, references, config, weights_path,
                    seed=config.seed + member_index,
                    callbacks=[tracking.EpochMetricsLogger(prefix), *(epoch_callbacks or [])],
                )
                embedder = embedding_model(classifier)
                embedders.append(embedder)
                good_embeddings.append(metric_learning.embed(embedder, good_train_images))

        with tracking.Stopwatch() as score_watch:
            detector = metric_learning.EmbeddingLOFDetector(
                embedders, good_embeddings, lof_neighbors=config.lof_neighbors
            ).calibrate(dataset.images_of("threshold"))
            scored = evaluation.scored_rows(dataset.table)
            scored_images = dataset.images[scored]
            member_scores = detector.member_scores(scored_images)
            scores = detector.combine(member_scores)

        extra_metrics = {
            "train_seconds": train_watch.seconds,
            "train_images_per_second": (
                config.ensemble * config.epochs * training_images / train_watch.seconds
            ),
            "score_seconds": score_watch.seconds,
        }
        if config.ensemble > 1:
            for member_index, raw_scores in enumerate(member_scores):
                member_result = evaluation.evaluate(dataset.table[scored], raw_scores)
                extra_metrics[f"member_{member_index}_test_image_auroc"] = member_result.metrics[
                    "test_image_auroc"
                ]
        return finish_training_run(
            run, dataset.table[scored], scores, scored_images, extra_metrics,
            detector=detector, keras_model=classifier, image_size=config.image_size,
            grayscale=False, register_as=config.register_as, category=config.category,
        )


def finish_training_run(
    run,
    scored_table,
    scores,
    scored_images,
    extra_metrics: dict,
    detector,
    keras_model,
    image_size: int,
    grayscale: bool,
    register_as: str,
    extra_figures=None,
    category: str = "",
) -> RunResult:
    """The tail every training method shares: evaluate, log, bundle the detector, register.

    If logging fails after training (the tracking server or its artifact store
    went away), the results are saved locally by `save_run_locally` and
    `tracking.RunNotLoggedError` names the folder.

    Parameters
    ----------
    run : mlflow.ActiveRun
        The open training run.
    scored_table : pandas.DataFrame
        The scored rows (splits threshold/val/test), aligned with ``scores`` and ``scored_images``.
    scores : numpy.ndarray of shape (n,)
        Higher = more anomalous.
    extra_metrics : dict
        Method-specific metrics (cost, pixel metrics...) logged with the contract's.
    detector
        The scorer saved into the ``detector`` bundle (has ``BUNDLE_METHOD`` and ``save``).
    keras_model : keras.Model
        Logged as ``model``.
    extra_figures : callable, optional
        ``extra_figures(evaluation) -> {artifact_path: Figure}``, e.g. ``heatmaps/``.
    category : str, optional
        Names the local recovery folder.
    """
    from defectlab.detector import detector_signature_and_example, write_bundle

    result = evaluation.evaluate(scored_table, scores)
    result.metrics.update(extra_metrics)
    with tracking.saving_locally_if_logging_fails(
        category or "run",
        lambda folder: save_run_locally(folder, result, keras_model, detector, image_size, grayscale),
    ):
        tracking.log_evaluation(result, scored_images, extra_figures(result) if extra_figures else None)

        tracking.log_keras_model(keras_model)
        with tempfile.TemporaryDirectory() as folder:
            bundle_dir = write_bundle(
                Path(folder) / "bundle", detector, detector.BUNDLE_METHOD,
                image_size, grayscale=grayscale, threshold=result.threshold,
            )
            signature, input_example = detector_signature_and_example(image_size, grayscale)
            detector_info = tracking.log_detector(bundle_dir, signature, input_example)
        model_version = None
        if register_as:
            model_version = tracking.register_model(detector_info.model_uri, register_as).version
    return RunResult(
        run_id=run.info.run_id,
        metrics=dict(result.metrics),
        detector_uri=detector_info.model_uri,
        model_version=model_version,
    )


def save_run_locally(folder: Path, result, keras_model, detector, image_size: int, grayscale: bool) -> None:
    """A run's results as plain files, for when they could not be logged.

    ``bundle/`` (the detector bundle, loadable by `defectlab.detector.load_bundle_scorer`),
    ``scores.csv`` (the contract's columns), ``metrics.json`` and ``model.keras``.
    """
    from defectlab.detector import write_bundle

    write_bundle(
        folder / "bundle", detector, detector.BUNDLE_METHOD,
        image_size, grayscale=grayscale, threshold=result.threshold,
    )
    result.scores_frame().to_csv(folder / "scores.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    keras_model.save(folder / "model.keras")


def ssim_tags(config: SSIMConfig, dataset: data.CategoryData, device: str) -> dict:
    return {
        "method": config.method,
        "category": config.category,
        "dataset": dataset.dataset_name,
        "ensemble_size": 1,
        "image_size": config.image_size,
        "device": device,
    }


def pixel_metrics(scored_table, masks: np.ndarray, anomaly_maps: np.ndarray) -> dict:
    """``test_pixel_auroc`` and ``test_aupro`` over the test images that have ground truth.

    Good images count with their all-clear masks; defect images without a
    mask file are left out (their defect pixels are unknown). Empty when no
    test defect has a mask.
    """
    from defectlab import metrics

    test = (scored_table["split"] == "test").to_numpy()
    has_mask = scored_table["mask_path"].fillna("").astype(str).str.len().to_numpy() > 0
    defect = scored_table["label"].to_numpy() == 1
    if not masks[test & defect & has_mask].any():
        logger.info("no ground-truth defect pixels among the test images: pixel metrics skipped")
        return {}
    kept = test & (~defect | has_mask)
    return {
        "test_pixel_auroc": metrics.pixel_auroc(masks[kept], anomaly_maps[kept]),
        "test_aupro": metrics.aupro(masks[kept], anomaly_maps[kept]),
    }


def ssim_heatmap_figures(result, detector, scored_images, anomaly_maps, masks) -> dict:
    """``heatmaps/<ranking>.png``: input, reconstruction, map and mask of the ranked test images."""
    from defectlab import report

    test_positions = np.flatnonzero(result.test_rows())
    test_table = result.scored_table.iloc[test_positions]
    scores = test_table["score"].to_numpy()
    rankings = report.ranked_indices(test_table["label"].to_numpy(), scores, count=report.HEATMAP_ROWS)
    figures = {}
    for ranking_name, indices in rankings.items():
        rows = test_positions[indices]
        figures[f"heatmaps/{ranking_name}.png"] = report.heatmap_figure(
            scored_images[rows], detector.reconstruct(scored_images[rows]), anomaly_maps[rows],
            masks[rows], scores[indices], test_table["defect_type"].to_numpy()[indices],
            report.RANKED_TITLES[ranking_name],
        )
    return figures


def run_ssim(config: SSIMConfig, run_name: str | None = None, nested: bool = False,
             epoch_callbacks: list | None = None) -> RunResult:
    """Train, score, evaluate and log one SSIM-autoencoder run.

    Checked before training: the settings (including the image size against
    the network's stride), the tracking server, the dataset, its splits and masks.
    Besides the contract's image metrics the run logs ``test_pixel_auroc`` and
    ``test_aupro`` (where masks exist) and ``heatmaps/``. The image score and the
    decision rule behind ``test_*_at_val_threshold`` are described in
    `defectlab.autoencoder`.
    """
    from defectlab import autoencoder
    from defectlab.models import check_ssim_autoencoder_settings

    # Checks that need no training
    config.validate()
    check_ssim_autoencoder_settings(config.image_size, config.latent_dim)
    tracking.check_tracking_server()
    dataset = data.load_category(
        config.data_dir, config.category, config.image_size, grayscale=config.grayscale,
        seed=config.seed,
    )
    scored = evaluation.scored_rows(dataset.table)
    scored_table = dataset.table[scored]
    masks = data.load_masks(scored_table, config.image_size)

    with tracking.training_run(
        config, ssim_tags(config, dataset, accelerator()), run_name=run_name, nested=nested
    ) as run:
        with tracking.Stopwatch() as train_watch:
            trained_autoencoder, _ = autoencoder.train_ssim_autoencoder(
                dataset.images_of("train"), config, seed=config.seed,
                callbacks=[tracking.EpochMetricsLogger(), *(epoch_callbacks or [])],
            )
        detector = autoencoder.SSIMDetectorScorer(
            trained_autoencoder, ssim_window=config.ssim_window,
            min_defect_area=autoencoder.min_defect_area_for(config.image_size),
        )
        scored_images = dataset.images[scored]
        with tracking.Stopwatch() as score_watch:
            scores, anomaly_maps = detector.score_images_with_maps(scored_images)
        extra_metrics = {
            "train_seconds": train_watch.seconds,
            "train_images_per_second": config.epochs * config.augment_to / train_watch.seconds,
            "score_seconds": score_watch.seconds,
            **pixel_metrics(scored_table, masks, anomaly_maps),
        }
        return finish_training_run(
            run, scored_table, scores, scored_images, extra_metrics,
            detector=detector, keras_model=trained_autoencoder, image_size=config.image_size,
            grayscale=config.grayscale, register_as=config.register_as, category=config.category,
            extra_figures=lambda result: ssim_heatmap_figures(
                result, detector, scored_images, anomaly_maps, masks
            ),
        )


def default_registered_name(method: str, category: str) -> str:
    """``defectlab-<metric|ssim>-<category>``."""
    short = {"l2_softmax": "metric", "ssim_ae": "ssim"}.get(method, method)
    return f"defectlab-{short}-{category}"



def run_pixel_baseline(
    data_dir: str = "synthetic",
    categories: list[str] | None = None,
    image_size: int = 64,
    n_components: int = 20,
    lof_neighbors: int = 20,
    grayscale: bool = False,
    seed: int = 0,
) -> dict[str, dict]:
    """PCA on pixels + LOF per category, on the whole test set (val and test: nothing is tuned).

    Returns ``{category: {"image_auroc": ..., "tpr_tnr_best": ...}}``; not logged.
    A detector worth the name must beat these figures.
    """
    from defectlab import metrics
    from defectlab.scoring import PCALOFScorer

    root = data.resolve_data_root(data_dir)
    results = {}
    for category in categories or data.list_categories(root):
        dataset = data.load_category(root, category, image_size, grayscale=grayscale, seed=seed)
        scorer = PCALOFScorer(n_components, lof_neighbors).fit(dataset.images_of("train"))
        test_set = dataset.table["split"].isin(["val", "test"]).to_numpy()
        labels = dataset.table["label"].to_numpy()[test_set]
        scores = scorer.score_samples(dataset.images[test_set])
        results[category] = {
            "image_auroc": metrics.image_auroc(labels, scores),
            "tpr_tnr_best": metrics.best_tpr_tnr(labels, scores)["tpr_tnr_best"],
        }
    return results


def score_image_files(pyfunc_model, paths: list[str], batch_size: int) -> np.ndarray:
    """Scores of image files through a detector pyfunc's ``predict``, ``batch_size`` files at a time.

    The files go in as paths in the ``image`` column, so they are decoded and
    resized exactly as a served request's images are.
    """
    from defectlab.detector import IMAGE_COLUMN

    scores = [
        pyfunc_model.predict(pd.DataFrame({IMAGE_COLUMN: paths[start:start + batch_size]}))["score"]
        for start in range(0, len(paths), batch_size)
    ]
    return np.concatenate([np.asarray(batch, dtype=np.float64) for batch in scores])


def evaluation_tags(config: EvaluateConfig, bundle_config: dict, dataset: data.CategoryData) -> dict:
    from defectlab.detector import bundle_ensemble_size

    return {
        "method": bundle_config["method"],
        "category": config.category,
        "dataset": dataset.dataset_name,
        "ensemble_size": bundle_ensemble_size(bundle_config),
        "image_size": bundle_config["image_size"],
        "evaluated_model": config.model_uri,
    }


def run_evaluate(config: EvaluateConfig, run_name: str | None = None) -> RunResult:
    """Score a logged or registered detector on one category and log a run like a training run's.

    The detector's own threshold is used (not one re-chosen on this data), so
    ``test_tpr_at_val_threshold``/``test_tnr_at_val_threshold`` say how the
    deployed detector does. Metrics, ``scores.csv``, plots and ranked grids go
    through the same `evaluation.evaluate` and `tracking.log_evaluation` as
    training. A detector that makes anomaly maps (SSIM autoencoder) also gets
    the training run's ``test_pixel_auroc``/``test_aupro`` and ``heatmaps/``.
    """
    from defectlab.detector import load_logged_detector

    config.validate()
    tracking.check_tracking_server()
    pyfunc_model, detector = load_logged_detector(config.model_uri)
    bundle_config = detector.bundle_config
    detector_size, grayscale = bundle_config["image_size"], bundle_config["grayscale"]
    dataset = data.load_category(
        config.data_dir, config.category, config.image_size or detector_size,
        grayscale=grayscale, seed=config.seed,
    )
    scored = evaluation.scored_rows(dataset.table)
    scored_table = dataset.table[scored]
    makes_maps = hasattr(detector.scorer, "score_images_with_maps")
    if makes_maps:
        masks = data.load_masks(scored_table, detector_size)
        images_at_detector_size = (
            dataset.images[scored] if dataset.images.shape[1] == detector_size
            else data.load_images(scored_table["path"].tolist(), detector_size, grayscale)
        )

    with tracking.training_run(
        config, evaluation_tags(config, bundle_config, dataset), run_name=run_name
    ) as run:
        extra_figures = None
        with tracking.Stopwatch() as score_watch:
            if makes_maps:
                # Maps come from the scorer itself: the pyfunc returns them only as nested lists.
                scores, anomaly_maps = detector.scorer.score_images_with_maps(images_at_detector_size)
            else:
                scores = score_image_files(pyfunc_model, scored_table["path"].tolist(), config.batch_size)
        result = evaluation.evaluate(scored_table, scores, threshold=detector.threshold)
        result.metrics["score_seconds"] = score_watch.seconds
        if makes_maps:
            result.metrics.update(pixel_metrics(scored_table, masks, anomaly_maps))
            extra_figures = ssim_heatmap_figures(
                result, detector.scorer, images_at_detector_size, anomaly_maps, masks
            )
        tracking.log_evaluation(result, dataset.images[scored], extra_figures)
        return RunResult(
            run_id=run.info.run_id, metrics=dict(result.metrics), detector_uri=config.model_uri
        )


def repeat_parent_tags(config) -> dict:
    """Tags of the parent run of ``repeats``: enough to find it, no metrics of its own."""
    return {
        "method": config.method,
        "category": config.category,
        "dataset": data.dataset_name(data.resolve_data_root(config.data_dir)),
        "repeats": config.repeats,
    }


def run_repeated(config, run_function, run_name: str | None = None) -> list[RunResult]:
    """Run ``run_function`` ``config.repeats`` times with seeds ``seed`` .. ``seed + repeats - 1``.

    With ``repeats == 1`` this is exactly ``run_function(config, run_name=run_name)``
    (one run, no parent). Otherwise one parent run (tags ``method``,
    ``category``, ``dataset``, ``repeats``; the config as params) holds one
    nested sibling run per seed, each an ordinary training run with
    ``repeats=1``, so ``compare`` finds the metrics on the children. A failing
    child ends the parent FAILED too.

    Parameters
    ----------
    config : MetricConfig or SSIMConfig
    run_function : callable
        ``run_function(config, run_name=..., nested=...) -> RunResult``, e.g. `run_metric`.

    Returns
    -------
    list of RunResult
        One per seed, in seed order.
    """
    if config.repeats == 1:
        return [run_function(config, run_name=run_name)]
    # Checked before the parent run exists, so bad settings leave no empty parent behind.
    config.validate()
    tracking.check_tracking_server()
    results = []
    with tracking.training_run(config, repeat_parent_tags(config), run_name=run_name):
        for seed in range(config.seed, config.seed + config.repeats):
            repeat_config = dataclasses.replace(config, seed=seed, repeats=1)
            results.append(run_function(repeat_config, run_name=f"seed {seed}", nested=True))
    return results
