"""One line of help for every option of every command: the single source of the CLI's ``--help``
and of the option table in ``docs/reference.md`` (a test keeps the two equal).

`OPTION_HELP` is keyed by config field name; `COMMAND_HELP` overrides a name for
one config class where the same name means something else there. Run
``python -m defectlab.option_help`` to print the table the reference holds.
"""

from __future__ import annotations

OPTION_HELP: dict[str, str] = {
    # Data and run
    "category": "Category folder of the dataset (MVTec AD layout), e.g. carpet.",
    "data_dir": "Dataset root in MVTec AD layout, or 'synthetic' for the built-in generated dataset.",
    "image_size": "Images are resized to this many pixels square before the method sees them.",
    "seed": "Seeds the splits, the initialisation and every random choice: the same seed repeats a run.",
    "register_as": "Register the run's detector under this model name; empty: do not register.",
    "repeats": "Run the same settings with seeds seed..seed+repeats-1 as sibling runs under one parent.",
    "resize": "How non-square images become square: stretch, center_crop or pad (kept in the detector).",
    "on_bad_image": "An unreadable image file: error (stop, naming it) or skip (leave it out, listed in the run).",
    "log_system_metrics": "Sample CPU, memory (and GPU) use into the run's system/* metrics.",
    "threshold_fpr": "Deployed threshold's target false-alarm rate on held-out good images; 0: their largest score.",
    # Training
    "epochs": "Passes over the training images.",
    "batch_size": "Images per training step (per forward pass for the patch method).",
    "optimizer": "sgd (with momentum 0.9, the article's) or adam.",
    "learning_rate": "Step size of the optimiser.",
    # Backbones
    "backbone_arch": "mobilenet_v2 (the article's) or efficientnet_lite0 (ImageNet weights from the pretrained extra).",
    "backbone_alpha": "MobileNetV2's width multiplier (ImageNet weights exist for 0.35 to 1.4).",
    "weights": "imagenet, none (train from scratch) or a path to a weights file.",
    # Metric learning
    "softmax_scale": "Scale of the L2-normalised embedding before the softmax (L2-softmax's alpha).",
    "reference_size": "How many reference images of other classes; -1: all.",
    "reference_dir": "An extra folder of reference images, one more class; empty: none.",
    "pseudo_defects": "Synthesised-defect images of the target per epoch as one more class; 0: the article's recipe.",
    "lof_neighbors": "Neighbours of the LocalOutlierFactor that scores the embeddings.",
    "ensemble": "Networks trained with consecutive seeds; the score is their mean z-score.",
    "mixed_precision": "float16 compute on a GPU.",
    # SSIM autoencoder
    "latent_dim": "Size of the autoencoder's bottleneck.",
    "ssim_window": "Side of the SSIM window in pixels (odd).",
    "augment_to": "Training images per epoch, made by random crops, flips and rotations of the good images.",
    "grayscale": "Train and score on one grey channel.",
    "loss": "ssim (Bergmann et al.) or l2 (the paper's AE-L2 row).",
    # Patch method
    "backbone": "Features: imagenet, none (random), self (trained in the run), pixels, run:<id>, models:/<name>@<alias> or a file.",
    "feature_layers": "Comma-separated layer names, shallow first; auto: the stride-8/16 stage ends with ImageNet weights.",
    "patch_size": "Each layer's features are averaged over this many patches square (odd).",
    "feature_dim": "Channels kept per patch by adaptive pooling; 0: all.",
    "coreset_ratio": "Fraction of the good patches the memory bank keeps (greedy k-center coreset).",
    "patch_neighbors": "Bank neighbours in PatchCore's reweighting of the image score; 1: none.",
    "map_sigma": "Gaussian smoothing of the anomaly maps in pixels at 224 px, scaled with image_size; 0: none.",
    "memory_limit_gib": "Refuse, before extracting, a bank whose patches, coreset and index would need more.",
    "search_index": "How the bank is searched: exact, ivf (approximate) or auto (IVF above 10,000 patches).",
    "self_epochs": "Epochs of the backbone trained in the run (backbone=self).",
    "self_pseudo_defects": "Synthesised defects per epoch for the backbone trained in the run (backbone=self).",
    "self_learning_rate": "Learning rate of the backbone trained in the run (backbone=self).",
    # Tuning
    "method": "The method whose settings are searched: metric, ssim or patch.",
    "n_trials": "Trials of the study (each a nested training run).",
    "timeout": "Stop starting trials after this many seconds; 0: no limit.",
    "storage": "Optuna storage URL shared by the workers, e.g. sqlite:///optuna.db or a PostgreSQL URL.",
    "study_name": "Name of the study; empty: <method>-<category>. Workers with the same name share it.",
    "search_space": "A YAML file replacing the method's built-in search space; empty: the built-in one.",
    "objective": "What the study maximises on the val split: val_image_auroc, or val_pixel_auroc (where the defect is).",
    "pruning_interval": "Epochs between the validation scores a trial reports to the pruner; 0: no pruning.",
    "heartbeat_interval": "Seconds between a worker's heartbeats.",
    "grace_period": "Seconds without a heartbeat after which a worker's trial is marked failed and retried.",
    # Serving, evaluation, export
    "model_uri": "The detector: runs:/<run_id>/detector, models:/<name>@<alias>, models:/<name>/<version> or a folder.",
    "input": "Images to score: a folder (searched recursively), a glob, a text file of paths or one image.",
    "out": "Folder to write into.",
    "overwrite": "Replace what an earlier call wrote in out.",
    "allow_errors": "Exit 0 even when some images cannot be read (they are listed in errors.csv).",
    "log": "Also log an MLflow run.",
    "progress_every": "Without a terminal, one progress line per this many images.",
    "format": "Export format: onnx (the networks as ONNX graphs, the rest NumPy; no TensorFlow).",
}

# The same name meaning something else for one command's config.
COMMAND_HELP: dict[tuple[str, str], str] = {
    ("EvaluateConfig", "category"): "Category to score; empty: the one the detector was trained on.",
    ("EvaluateConfig", "data_dir"): "Dataset root; empty: the one the detector was trained on.",
    ("EvaluateConfig", "image_size"): "Size of the images in the ranked grids; 0: the detector's own.",
    ("EvaluateConfig", "batch_size"): "Images per call of the detector.",
    ("EvaluateConfig", "seed"): "Seeds the split of the category into threshold, val and test images.",
    ("PredictConfig", "batch_size"): "Images decoded and scored at a time.",
    ("PredictConfig", "out"): "Folder to write predictions.csv, errors.csv and the flagged images' maps into.",
    ("ExportConfig", "category"): "Category for the parity check; empty: the training run's threshold split.",
    ("ExportConfig", "data_dir"): "Dataset root of the parity check's category.",
    ("ExportConfig", "seed"): "Seeds the split of the parity check's category.",
    ("ExportConfig", "out"): "Folder to write the exported MLflow model into.",
    ("ExportConfig", "register_as"): "Log the export as a run's detector and register it under this name.",
    ("ExportConfig", "log"): "Log the export as a run's detector without registering it.",
    ("ExportConfig", "parity_tolerance"): "Largest relative difference allowed between an image's exported and original score.",
    ("TuneConfig", "seed"): "Seeds the sampler and the trials' training.",
}


def option_help(config_name: str, field_name: str) -> str:
    """The help line of ``field_name`` in the config class named ``config_name``; KeyError if none."""
    return COMMAND_HELP.get((config_name, field_name)) or OPTION_HELP[field_name]


def options_markdown() -> str:
    """The reference's table of every option: name, help, and where the help differs by command."""
    lines = ["| option | meaning |", "| --- | --- |"]
    for name, text in OPTION_HELP.items():
        lines.append(f"| `--{name.replace('_', '-')}` | {text} |")
    for (config_name, name), text in COMMAND_HELP.items():
        command = config_name.removesuffix("Config").lower()
        lines.append(f"| `{command} --{name.replace('_', '-')}` | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(options_markdown())
