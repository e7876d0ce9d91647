"""L2-softmax metric learning: reference classes, the ensemble average, bad input, NaN loss."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest

from defectlab import data
from defectlab.methods.metric import training as metric_learning
from defectlab.config import ConfigError
from defectlab.methods.metric import MetricConfig
from defectlab.runner import run_training
from defectlab.methods.backbones import WeightsUnavailableError
from defectlab.methods.keras_training import NonFiniteLossError
from defectlab.methods.metric.network import build_l2_softmax_classifier, embedding_model

from .conftest import TINY_METRIC_OPTIONS


def tiny_config(root, **overrides) -> MetricConfig:
    return MetricConfig(data_dir=str(root), **{**TINY_METRIC_OPTIONS, **overrides})


def test_reference_classes_are_the_other_categories(tiny_dataset_root):
    paths = metric_learning.reference_paths(tiny_dataset_root, "carpet", -1, "", seed=0)
    assert sorted(paths) == ["cable", "capsule", "leather"]
    capped = metric_learning.reference_paths(tiny_dataset_root, "carpet", 10, "", seed=0)
    assert sum(len(p) for p in capped.values()) == 10
    assert capped == metric_learning.reference_paths(tiny_dataset_root, "carpet", 10, "", seed=0)


def test_reference_dir_is_one_more_class(tiny_dataset_root):
    extra = data.good_train_paths(tiny_dataset_root, "leather")[:3]
    folder = tiny_dataset_root.parent / "extra_refs"
    folder.mkdir(exist_ok=True)
    for path in extra:
        shutil.copy(path, folder)
    paths = metric_learning.reference_paths(tiny_dataset_root, "carpet", 0, str(folder), seed=0)
    assert list(paths) == ["reference_dir:extra_refs"] and len(paths["reference_dir:extra_refs"]) == 3


def test_head_is_l2_softmax_from_builtin_layers():
    classifier = build_l2_softmax_classifier(3, 32, backbone_alpha=0.35, softmax_scale=10.0)
    names = [layer.__class__.__name__ for layer in classifier.layers]
    assert names[-4:] == ["GlobalAveragePooling2D", "UnitNormalization", "Rescaling", "Dense"]
    embedding = embedding_model(classifier)
    features = embedding.predict(np.zeros((2, 32, 32, 3), dtype=np.float32), verbose=0)
    assert features.shape[0] == 2 and features.ndim == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"image_size": 16}, "image_size must be at least 32"),
        ({"ensemble": 0}, "ensemble must be at least 1"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam"),
    ],
)
def test_bad_settings_fail_before_anything_runs(tiny_dataset_root, tracking_uri, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_training(tiny_config(tiny_dataset_root, **overrides))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_unknown_category_fails_before_training(tiny_dataset_root, tracking_uri):
    with pytest.raises(data.DatasetError, match="unknown category 'bottle'.*carpet"):
        run_training(tiny_config(tiny_dataset_root, category="bottle"))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_no_reference_images_fails_before_training(tiny_dataset_root, tmp_path, tracking_uri):
    lonely_root = tmp_path / "only-carpet"
    shutil.copytree(tiny_dataset_root / "carpet", lonely_root / "carpet")
    with pytest.raises(data.DatasetError, match="no reference images.*at least two classes"):
        run_training(tiny_config(lonely_root))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_offline_imagenet_weights_fail_before_training(tiny_dataset_root, tmp_path, tracking_uri, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    monkeypatch.setattr(
        metric_learning, "train_l2_softmax",
        lambda *a, **k: pytest.fail("training started although the weights are unavailable"),
    )
    with pytest.raises(WeightsUnavailableError) as raised:
        run_training(tiny_config(tiny_dataset_root, weights="imagenet"))
    message = str(raised.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5" in message
    assert str(tmp_path / "empty-keras-home" / "models") in message and "weights=none" in message
    assert mlflow.search_runs(search_all_experiments=True).empty


@pytest.mark.training
def test_non_finite_loss_fails_the_run_and_registers_nothing(tiny_dataset_root, tracking_uri):
    config = tiny_config(
        tiny_dataset_root, epochs=1, learning_rate=1e38, optimizer="sgd", register_as="never-registered"
    )
    with pytest.raises(NonFiniteLossError):
        run_training(config)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert runs["status"].tolist() == ["FAILED"]
    assert "NonFiniteLossError" in runs["tags.failure_reason"].iloc[0]
    assert mlflow.MlflowClient().search_registered_models() == []


def test_an_epoch_loss_orders_of_magnitude_above_the_start_is_divergence():
    from defectlab.methods.keras_training import DIVERGENCE_FACTOR, DivergedTrainingError, RaiseOnBadLoss

    guard = RaiseOnBadLoss()
    guard.on_train_begin()
    guard.on_train_batch_end(0, {"loss": 2.0})
    guard.on_train_batch_end(1, {"loss": 900.0})  # a bad batch alone is not divergence
    guard.on_epoch_end(0, {"loss": 0.99 * DIVERGENCE_FACTOR * 2.0})  # just under: a rough start
    with pytest.raises(DivergedTrainingError, match=r"loss rose from 2 \(first batch\) to 4.4e\+07 \(epoch 2\).*lower learning_rate"):
        guard.on_epoch_end(1, {"loss": 4.4e7})


@pytest.mark.training
def test_a_diverged_training_fails_the_run_and_registers_nothing(tiny_dataset_root, tracking_uri):
    from defectlab.methods.keras_training import DivergedTrainingError

    # The newcomer's case: 64 px, learning rate 1e6 (loss 4.4e7 in its first epoch, then 1.1e8).
    config = tiny_config(tiny_dataset_root, epochs=1, learning_rate=1e6, register_as="never-registered")
    with pytest.raises((DivergedTrainingError, NonFiniteLossError)):
        run_training(config)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert runs["status"].tolist() == ["FAILED"]
    assert mlflow.MlflowClient().search_registered_models() == []


@pytest.mark.training
def test_ensemble_score_is_mean_of_member_z_scores(tiny_dataset_root, tracking_uri, tmp_path):
    result = run_training(tiny_config(tiny_dataset_root, ensemble=2, epochs=1, reference_size=40))
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["ensemble_size"] == "2"
    assert {"member_0_test_image_auroc", "member_1_test_image_auroc"} <= set(run.data.metrics)

    scores = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="scores.csv"))
    detector = mlflow.pyfunc.load_model(result.detector_uri).unwrap_python_model()
    dataset = data.load_category(tiny_dataset_root, "carpet", 64, seed=0)
    path_to_row = {path: index for index, path in enumerate(dataset.table["path"])}
    images = dataset.images[[path_to_row[path] for path in scores["path"]]]
    member_scores = detector.scorer.member_scores(images)

    heldout = (scores["split"] == "threshold").to_numpy()
    expected = np.mean(
        [(raw - raw[heldout].mean()) / raw[heldout].std() for raw in member_scores], axis=0
    )
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
