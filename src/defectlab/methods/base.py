"""What a detection method is: one `Method` value, defined in the method's own package.

A method owns everything specific to it: its config, network(s), how it fits,
how its detector scores images (and makes anomaly maps), its extra heatmap
panels, its bundle files, its default search space and its pruning scorer.
The runner, CLI, tuning, comparison and serving read these fields and never
branch on a method's name.

A detector (what ``fit`` returns and ``load_detector`` reads back) has:

- ``score_images(images) -> scores (n,)``, higher = more anomalous;
- ``score_images_with_maps(images) -> (scores (n,), maps (n, h, w))`` when
  the method ``makes_maps`` (maps at the detector's input size, higher = more
  anomalous);
- ``save(folder) -> dict``: writes plain files, returns the JSON-able description
  that ``load_detector(folder, description)`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class FitResult:
    """What a method's fit produced.

    Attributes
    ----------
    detector
        The fitted detector (see the module docstring).
    keras_model : keras.Model
        Logged as the run's ``model``.
    metrics : dict
        Method-specific metrics logged with the contract's (e.g. ``train_seconds``).
    figures : dict
        ``{artifact_path: matplotlib Figure}`` logged with the run (e.g. ``training/pseudo_defects.png``).
    """

    detector: Any
    keras_model: Any
    metrics: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedRun:
    """A method's run after the checks that need no training, ready to fit.

    ``tags`` are the method's own run tags (e.g. ``weights``); ``fit(epoch_callbacks)``
    trains and returns a `FitResult`; ``epoch_callbacks`` are Keras callbacks
    (per-epoch logging, tuning's pruning) that a method without epochs ignores.
    """

    tags: dict
    fit: Callable[[list], FitResult]
    ensemble_size: int = 1


@dataclass(frozen=True)
class RunScores:
    """A detector's scores of a run's images: scores, maps (or None), method-specific metrics."""

    scores: np.ndarray
    anomaly_maps: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)


def score_images(detector, images: np.ndarray, makes_maps: bool) -> RunScores:
    """The default scoring of a run: scores, and maps when the method makes them."""
    if makes_maps:
        scores, anomaly_maps = detector.score_images_with_maps(images)
        return RunScores(np.asarray(scores, dtype=np.float64), np.asarray(anomaly_maps))
    return RunScores(np.asarray(detector.score_images(images), dtype=np.float64))


def no_heatmap_panels(detector, images: np.ndarray) -> list:
    return []


@dataclass(frozen=True)
class OnnxExport:
    """How a method's detector is exported without TensorFlow: its networks as ONNX graphs, the rest NumPy.

    Attributes
    ----------
    write : callable
        ``write(detector, folder) -> dict`` (needs TensorFlow and tf2onnx):
        writes the detector's networks as ``.onnx`` files and its other state
        as plain files into ``folder``; returns the JSON-able description that
        ``load`` reads (the bundle's ``detector.json`` entries).
    load : callable
        ``load(folder, description) -> detector`` (onnxruntime, NumPy,
        scikit-learn; no TensorFlow or Keras, at import or at call): a detector
        with the same scoring methods and scores as the original.
    """

    write: Callable
    load: Callable


def onnx_network_export(load_detector: Callable) -> OnnxExport:
    """The `OnnxExport` of a detector whose ``save(folder, network_format="onnx")`` writes its
    networks as ONNX graphs and whose ``load_detector`` reads either kind of network file."""
    return OnnxExport(
        write=lambda detector, folder: detector.save(folder, network_format="onnx"), load=load_detector
    )


@dataclass(frozen=True)
class Method:
    """One registered detection method.

    Attributes
    ----------
    name : str
        The CLI command, MLproject entry point, ``tune --method`` value and the
        middle of registered-model names (``defectlab-<name>-<category>``).
    tag : str
        The run tag ``method`` and the bundle's ``method`` (e.g. ``l2_softmax``).
    label : str
        The display name in comparisons.
    summary : str
        One line of help for the CLI command.
    config_class : type
        The method's frozen config dataclass (a `defectlab.config.RunConfig`).
    makes_maps : bool
        Its detector has ``score_images_with_maps``: runs log pixel metrics and heatmaps.
    prepare : callable
        ``prepare(config, dataset) -> PreparedRun``: every check that needs no
        training (weights, reference images, memory), before any run is opened.
    check : callable
        ``check(config)``: the checks that need no data either (a weights file,
        a download), run before the dataset is loaded.
    load_detector : callable
        ``load_detector(folder, description) -> detector`` (the inverse of ``detector.save``).
    default_search_space : callable
        ``default_search_space(config, data_root) -> {setting: spec}`` for tuning.
    pruning_scorer : callable or None
        ``pruning_scorer(dataset, config) -> (keras_model -> val_image_auroc)``,
        for pruning trials between epochs; None for methods without epochs.
    grayscale : callable
        ``grayscale(config) -> bool``: the colour mode its images are decoded in.
    score_run : callable or None
        ``score_run(detector, images, evaluate_scores) -> RunScores``, where
        ``evaluate_scores(scores) -> metrics`` evaluates any score vector of the
        same images (e.g. an ensemble member's); None: `score_images`.
    heatmap_panels : callable
        ``heatmap_panels(detector, images) -> [(title, float images in [0, 1])]``:
        extra columns of the ``heatmaps/`` figures (e.g. the reconstruction).
    run_label : callable or None
        ``run_label(tags, params) -> str``: a run's display name in comparisons
        (e.g. an ensemble's size); None means ``label``.
    onnx_export : OnnxExport or None
        How ``defectlab export --format onnx`` writes and serving reads its
        detector without TensorFlow; None: the method cannot be exported.
    """

    name: str
    tag: str
    label: str
    summary: str
    config_class: type
    makes_maps: bool
    prepare: Callable
    load_detector: Callable
    default_search_space: Callable
    pruning_scorer: Callable | None = None
    grayscale: Callable = lambda config: False
    score_run: Callable | None = None
    heatmap_panels: Callable = no_heatmap_panels
    run_label: Callable | None = None
    check: Callable = lambda config: None
    onnx_export: OnnxExport | None = None

    def score(self, detector, images: np.ndarray, evaluate_scores: Callable) -> RunScores:
        """The run's scores of ``images`` (the method's ``score_run``, or the default)."""
        if self.score_run is not None:
            return self.score_run(detector, images, evaluate_scores)
        return score_images(detector, images, self.makes_maps)

    def label_of_run(self, tags: dict, params: dict) -> str:
        """Display name of one run of this method in comparisons."""
        return self.run_label(tags, params) if self.run_label else self.label

    def registered_name(self, category: str) -> str:
        """``defectlab-<name>-<category>``: the default registered-model name."""
        return f"defectlab-{self.name}-{category}"
