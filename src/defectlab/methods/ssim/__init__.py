"""The SSIM autoencoder (Bergmann et al. 2018): reconstruct good images, flag what it cannot.

- `config`: `SSIMConfig`;
- `architecture`: the layer table and the image sizes it accepts;
- `network`: the Keras autoencoder;
- `training`: loss, augmentation, maps, `SSIMDetectorScorer`;
- `region`: the image score of a map (NumPy);
- `onnx_export`: the detector as one ONNX graph (reconstruction and map) and its scorer;
- this module: the method's `METHOD` entry.
"""

from __future__ import annotations

from defectlab.methods.base import FitResult, Method, OnnxExport, PreparedRun
from defectlab.methods.ssim.config import SSIMConfig

LABEL = "SSIM AE"


def prepare(config: SSIMConfig, dataset) -> PreparedRun:
    """Nothing to check beyond the config (the image size against the stride is checked there)."""

    def fit(epoch_callbacks: list) -> FitResult:
        from defectlab import tracking
        from defectlab.methods.ssim import training
        from defectlab.tracking.callbacks import EpochMetricsLogger

        with tracking.Stopwatch() as train_watch:
            autoencoder, _ = training.train_ssim_autoencoder(
                dataset.images_of("train"), config, seed=config.seed,
                callbacks=[EpochMetricsLogger(), *epoch_callbacks],
            )
        detector = training.SSIMDetectorScorer(
            autoencoder, ssim_window=config.ssim_window,
            min_defect_area=training.min_defect_area_for(config.image_size),
        )
        return FitResult(
            detector=detector,
            keras_model=autoencoder,
            metrics={
                "train_seconds": train_watch.seconds,
                "train_images_per_second": config.epochs * config.augment_to / train_watch.seconds,
            },
        )

    return PreparedRun(tags={}, fit=fit)


def load_detector(folder, description):
    from defectlab.methods.ssim.training import SSIMDetectorScorer

    return SSIMDetectorScorer.load(folder, description)


def write_onnx(detector, folder) -> dict:
    from defectlab.methods.ssim import onnx_export

    return onnx_export.write(detector, folder)


def load_onnx_detector(folder, description):
    from defectlab.methods.ssim import onnx_export

    return onnx_export.load(folder, description)


def search_space() -> dict:
    """Epochs, optimiser, learning rate and the bottleneck size."""
    return {
        "epochs": {"type": "int", "low": 2, "high": 100, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "latent_dim": {"type": "int", "low": 16, "high": 512, "log": True},
    }


def default_search_space(config: SSIMConfig, data_root) -> dict:
    return search_space()


def pruning_scorer(dataset, config: SSIMConfig):
    """``autoencoder -> val_image_auroc``: the autoencoder's image scores of the val images."""
    from defectlab.evaluation.metrics import image_auroc
    from defectlab.methods.ssim.training import SSIMDetectorScorer, min_defect_area_for

    val_rows = dataset.rows("val")
    val_labels = dataset.table["label"].to_numpy()[val_rows]
    val_images = dataset.images[val_rows]

    def score(autoencoder) -> float:
        scorer = SSIMDetectorScorer(autoencoder, config.ssim_window, min_defect_area_for(config.image_size))
        return image_auroc(val_labels, scorer.score_images(val_images))

    return score


def heatmap_panels(detector, images) -> list:
    """The reconstruction beside the input: what the autoencoder thought the image should be."""
    return [("reconstruction", detector.reconstruct(images))]


METHOD = Method(
    name="ssim",
    tag="ssim_ae",
    label=LABEL,
    summary="Train the SSIM autoencoder on one category, score with its anomaly maps, log everything.",
    config_class=SSIMConfig,
    makes_maps=True,
    prepare=prepare,
    load_detector=load_detector,
    default_search_space=default_search_space,
    pruning_scorer=pruning_scorer,
    grayscale=lambda config: config.grayscale,
    heatmap_panels=heatmap_panels,
    onnx_export=OnnxExport(write=write_onnx, load=load_onnx_detector),
)

__all__ = ["METHOD", "SSIMConfig"]
