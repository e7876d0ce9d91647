"""The one generic runner: a tracked training run of any registered method, and ``evaluate``.

`run_training` is what ``defectlab <method>`` (and ``mlflow run . -e <method>``)
calls::

    checks (config, tracking server) -> load data -> method.prepare (checks that need no training)
    -> open the run -> fit -> score (and maps) -> evaluate -> figures -> log -> register

with the recovery folder if the server is lost after training. The
method-specific part is the method's ``prepare``/``fit``/``score`` (see
`defectlab.methods.base.Method`); everything else here is shared.
`run_evaluate` scores an already logged detector and logs its run through the
same evaluation and logging path.
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
from defectlab.config import ConfigError, EvaluateConfig
from defectlab.errors import spell_setting
from defectlab.evaluation.pixel import heatmap_figures, pixel_metrics
from defectlab.methods import method_by_tag, method_of_config
from defectlab.methods.base import Method
from defectlab.methods.keras_training import accelerator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a finished training (or evaluation) run produced."""

    run_id: str
    metrics: dict
    detector_uri: str
    model_version: str | None = None


def training_tags(method: Method, config, dataset: data.CategoryData, prepared, device: str) -> dict:
    """The contract's tags of a training run, plus the method's own (e.g. ``weights``)."""
    return {
        "method": method.tag,
        "category": config.category,
        "dataset": dataset.dataset_name,
        "ensemble_size": prepared.ensemble_size,
        "image_size": config.image_size,
        "device": device,
        **prepared.tags,
    }


def load_dataset(config, grayscale: bool) -> data.CategoryData:
    """The category as a training ``config`` reads it: its size, colour, geometry, bad-file policy and split seed."""
    return data.load_category(
        config.data_dir, config.category, config.image_size, grayscale=grayscale, seed=config.seed,
        resize=config.resize, on_bad_image=config.on_bad_image,
    )


def run_training(config, run_name: str | None = None, nested: bool = False,
                 epoch_callbacks: list | None = None) -> RunResult:
    """Train, score, evaluate and log one run of the method whose config ``config`` is.

    Everything that can be checked is checked before the run opens: the
    settings (at the config's construction), the tracking server, the dataset
    and its splits, and the method's own checks (weights, reference images,
    memory). Map-making methods also log ``test_pixel_auroc``, ``test_aupro``
    (where masks exist) and ``heatmaps/``.
    """
    method = method_of_config(config)
    tracking.check_tracking_server()
    method.check(config)
    grayscale = method.grayscale(config)
    dataset = load_dataset(config, grayscale)
    scored = evaluation.scored_rows(dataset.table)
    scored_table = dataset.table[scored]
    masks = data.load_masks(scored_table, config.image_size, resize=config.resize) if method.makes_maps else None
    prepared = method.prepare(config, dataset)

    tags = training_tags(method, config, dataset, prepared, accelerator())
    with tracking.tracked_run(dataclasses.asdict(config), tags, run_name=run_name, nested=nested,
                              log_system_metrics=config.log_system_metrics) as run:
        tracking.log_dataset_inputs(dataset)
        fitted = prepared.fit(list(epoch_callbacks or []))
        scored_images = dataset.images[scored]
        with tracking.Stopwatch() as score_watch:
            run_scores = method.score(
                fitted.detector, scored_images,
                lambda scores: evaluation.evaluate(scored_table, scores, threshold_fpr=config.threshold_fpr).metrics,
            )
        extra_metrics = {**fitted.metrics, **run_scores.metrics, "score_seconds": score_watch.seconds}
        if method.makes_maps:
            extra_metrics.update(pixel_metrics(scored_table, masks, run_scores.anomaly_maps))

        def extra_figures(result) -> dict:
            figures = dict(fitted.figures)
            if method.makes_maps:
                figures.update(heatmap_figures(
                    result, scored_images, run_scores.anomaly_maps, masks,
                    lambda images: method.heatmap_panels(fitted.detector, images),
                ))
            return figures

        return finish_training_run(
            run, method, scored_table, run_scores.scores, scored_images, extra_metrics,
            detector=fitted.detector, keras_model=fitted.keras_model,
            decoder=data.ImageDecoder(config.image_size, grayscale, resize=config.resize),
            register_as=config.register_as, category=config.category, extra_figures=extra_figures,
            threshold_fpr=config.threshold_fpr,
        )


def finish_training_run(
    run,
    method: Method,
    scored_table,
    scores: np.ndarray,
    scored_images: np.ndarray,
    extra_metrics: dict,
    detector,
    keras_model,
    decoder: data.ImageDecoder,
    register_as: str = "",
    category: str = "",
    extra_figures=None,
    threshold_fpr: float = 0.0,
) -> RunResult:
    """The shared tail of every training run: evaluate, log, bundle, register.

    A collapsed detector (`evaluation.check_scores_vary`) fails the run
    before anything is logged or registered. If logging fails after training
    (the tracking server is gone), the results are saved to a local recovery folder and `tracking.RunNotLoggedError`
    names it.

    Parameters
    ----------
    run : mlflow.ActiveRun
        The open training run.
    method : Method
        Whose detector this is (its tag goes into the bundle).
    scored_table : pandas.DataFrame
        The scored rows (splits threshold/val/test), aligned with ``scores`` and ``scored_images``.
    scores : numpy.ndarray of shape (n,)
        Higher = more anomalous.
    extra_metrics : dict
        Method-specific metrics (cost, pixel metrics...) logged with the contract's.
    detector
        Saved into the ``detector`` bundle (see `defectlab.methods.base`).
    keras_model : keras.Model
        Logged as ``model``.
    decoder : ImageDecoder
        How the run's images were decoded; serving decodes the same way.
    extra_figures : callable, optional
        ``extra_figures(evaluation) -> {artifact_path: Figure}``, e.g. ``heatmaps/``.
    category : str, optional
        Names the local recovery folder.
    threshold_fpr : float, optional
        The deployed threshold's target false-alarm rate on the held-out good images.
    """
    from defectlab.serving.bundle import write_bundle
    from defectlab.serving.detector import detector_signature_and_example

    evaluation.check_scores_vary(scored_table, scores)
    result = evaluation.evaluate(scored_table, scores, threshold_fpr=threshold_fpr)
    result.metrics.update(extra_metrics)
    with tracking.saving_locally_if_logging_fails(
        category or "run",
        lambda folder: save_run_locally(folder, method, result, keras_model, detector, decoder),
    ):
        tracking.log_evaluation(result, scored_images, extra_figures(result) if extra_figures else None)

        tracking.log_keras_model(keras_model)
        with tempfile.TemporaryDirectory() as folder:
            bundle_dir = write_bundle(
                Path(folder) / "bundle", detector, method.tag, decoder, threshold=result.threshold
            )
            signature, input_example = detector_signature_and_example(decoder.image_size, decoder.grayscale)
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


def save_run_locally(folder: Path, method: Method, result, keras_model, detector,
                     decoder: data.ImageDecoder) -> None:
    """A run's results as plain files, for when they could not be logged.

    ``bundle/`` (the detector bundle, loadable by `defectlab.serving.detector.bundle_to_local_detector`),
    ``scores.csv`` (the contract's columns), ``metrics.json`` and ``model.keras``.
    """
    from defectlab.serving.bundle import write_bundle

    write_bundle(folder / "bundle", detector, method.tag, decoder, threshold=result.threshold)
    result.scores_frame().to_csv(folder / "scores.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    keras_model.save(folder / "model.keras")


def score_image_files(pyfunc_model, paths: list[str], batch_size: int) -> np.ndarray:
    """Scores of image files through a detector pyfunc's ``predict``, ``batch_size`` files at a time.

    The files go in as paths in the ``image`` column, so they are decoded and
    resized exactly as a served request's images are.
    """
    from defectlab.serving.detector import IMAGE_COLUMN

    scores = [
        pyfunc_model.predict(pd.DataFrame({IMAGE_COLUMN: paths[start:start + batch_size]}))["score"]
        for start in range(0, len(paths), batch_size)
    ]
    return np.concatenate([np.asarray(batch, dtype=np.float64) for batch in scores])


def evaluation_tags(config: EvaluateConfig, bundle_config: dict, dataset: data.CategoryData) -> dict:
    from defectlab.serving.bundle import bundle_ensemble_size

    return {
        "method": bundle_config["method"],
        "category": config.category,
        "dataset": dataset.dataset_name,
        "ensemble_size": bundle_ensemble_size(bundle_config),
        "image_size": bundle_config["image_size"],
        "evaluated_model": config.model_uri,
    }


def with_training_data(config: EvaluateConfig) -> EvaluateConfig:
    """``config`` with an empty ``category``/``data_dir`` filled from the model's training run.

    A detector is only meaningful on the data it was trained for: evaluating a
    tiles detector on the built-in carpet scored and logged a number that
    meant nothing. Raises `ConfigError` when the model has no training run to
    read them from (a bundle folder) or the run recorded none.
    """
    import mlflow

    from defectlab.tracking.registry import run_id_of_model_uri

    if config.category and config.data_dir:
        return config
    run_id = run_id_of_model_uri(config.model_uri)
    missing = " and ".join(
        spell_setting(name, placeholder)
        for name, placeholder in (("category", "NAME"), ("data_dir", "FOLDER")) if not getattr(config, name)
    )
    if run_id is None:
        raise ConfigError(f"{config.model_uri} has no training run to read its data from: pass {missing}")
    params = mlflow.get_run(run_id).data.params
    category = config.category or params.get("category", "")
    data_dir = config.data_dir or params.get("data_dir", "")
    if not category or not data_dir:
        raise ConfigError(f"the training run {run_id} of {config.model_uri} recorded no category or data_dir: pass {missing}")
    logger.info(
        "evaluating on category %s of %s: the data of the model's training run %s "
        "(%s and %s name other data)", category, data_dir, run_id,
        spell_setting("category", "NAME"), spell_setting("data_dir", "FOLDER"),
    )
    return dataclasses.replace(config, category=category, data_dir=data_dir)


def run_evaluate(config: EvaluateConfig, run_name: str | None = None) -> RunResult:
    """Score a logged or registered detector on one category and log a run like a training run's.

    The detector's own threshold is used (not one re-chosen on this data), so
    ``test_tpr_at_val_threshold``/``test_tnr_at_val_threshold`` say how the
    deployed detector does. Metrics, ``scores.csv``, plots and ranked grids go
    through the same `evaluation.evaluate` and `tracking.log_evaluation` as
    training. A detector of a map-making method also gets the training run's
    ``test_pixel_auroc``/``test_aupro`` and ``heatmaps/``.
    """
    from defectlab.serving.detector import load_logged_detector

    tracking.check_tracking_server()
    pyfunc_model, detector = load_logged_detector(config.model_uri)
    config = with_training_data(config)
    bundle_config = detector.bundle_config
    method = method_by_tag(bundle_config["method"])
    decoder = detector.decoder
    dataset = data.load_category(
        config.data_dir, config.category, config.image_size or decoder.image_size,
        grayscale=decoder.grayscale, seed=config.seed, resize=decoder.resize,
        on_bad_image=config.on_bad_image,
    )
    scored = evaluation.scored_rows(dataset.table)
    scored_table = dataset.table[scored]
    if method.makes_maps:
        masks = data.load_masks(scored_table, decoder.image_size, resize=decoder.resize)
        images_at_detector_size = (
            dataset.images[scored] if dataset.images.shape[1] == decoder.image_size
            else data.load_images(scored_table["path"].tolist(), decoder.image_size, decoder.grayscale,
                                  resize=decoder.resize)
        )

    with tracking.tracked_run(
        dataclasses.asdict(config), evaluation_tags(config, bundle_config, dataset), run_name=run_name
    ) as run:
        tracking.log_dataset_inputs(dataset, tracking.EVALUATION_CONTEXTS)
        extra_figures = None
        with tracking.Stopwatch() as score_watch:
            if method.makes_maps:
                # Maps come from the scorer itself: the pyfunc returns them only as nested lists.
                scores, anomaly_maps = detector.scorer.score_images_with_maps(images_at_detector_size)
            else:
                scores = score_image_files(pyfunc_model, scored_table["path"].tolist(), config.batch_size)
        result = evaluation.evaluate(scored_table, scores, threshold=detector.threshold)
        result.metrics["score_seconds"] = score_watch.seconds
        if method.makes_maps:
            result.metrics.update(pixel_metrics(scored_table, masks, anomaly_maps))
            extra_figures = heatmap_figures(
                result, images_at_detector_size, anomaly_maps, masks,
                lambda images: method.heatmap_panels(detector.scorer, images),
            )
        tracking.log_evaluation(result, dataset.images[scored], extra_figures)
        return RunResult(
            run_id=run.info.run_id, metrics=dict(result.metrics), detector_uri=config.model_uri
        )


def repeat_parent_tags(config) -> dict:
    """Tags of the parent run of ``repeats``: enough to find it, no metrics of its own."""
    return {
        "method": method_of_config(config).tag,
        "category": config.category,
        "dataset": data.dataset_name(data.resolve_data_root(config.data_dir)),
        "repeats": config.repeats,
    }


def run_repeated(config, run_function=None, run_name: str | None = None) -> list[RunResult]:
    """Run ``run_function`` ``config.repeats`` times with seeds ``seed`` .. ``seed + repeats - 1``.

    With ``repeats == 1`` this is exactly ``run_function(config, run_name=run_name)``
    (one run, no parent). Otherwise one parent run (tags ``method``,
    ``category``, ``dataset``, ``repeats``; the config as params) holds one
    nested sibling run per seed, each an ordinary training run with
    ``repeats=1``, so ``compare`` finds the metrics on the children. A failing
    child ends the parent FAILED too.

    Parameters
    ----------
    config : RunConfig
        A registered method's config.
    run_function : callable, optional
        ``run_function(config, run_name=..., nested=...) -> RunResult``; default `run_training`.

    Returns
    -------
    list of RunResult
        One per seed, in seed order.
    """
    run_function = run_function or run_training
    if config.repeats == 1:
        return [run_function(config, run_name=run_name)]
    # Checked before the parent run exists, so bad settings leave no empty parent behind.
    tracking.check_tracking_server()
    results = []
    with tracking.tracked_run(dataclasses.asdict(config), repeat_parent_tags(config), run_name=run_name):
        for seed in range(config.seed, config.seed + config.repeats):
            repeat_config = dataclasses.replace(config, seed=seed, repeats=1)
            results.append(run_function(repeat_config, run_name=f"seed {seed}", nested=True))
    return results
