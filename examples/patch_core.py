"""PatchCore-style patch method on the built-in dataset: a memory bank of good patches, anomaly maps.

Reads top to bottom: setup, data, model, fit, score, look at the result. No
MLflow: the tracked version of the same is `defectlab patch`.
"""

import keras
import numpy as np

from defectlab import data
from defectlab.evaluation import metrics
from defectlab.methods.patch.detector import PatchCoreDetector
from defectlab.methods.patch.features import patch_feature_extractor

# Setup
IMAGE_SIZE = 64
keras.utils.set_random_seed(0)

# Data: good train images to fit on; the test split holds good and defective images
dataset = data.load_category("synthetic", "carpet", IMAGE_SIZE, seed=0)
good_train_images = dataset.images_of("train")
test_rows = dataset.rows("test")
test_images = dataset.images[test_rows]
test_labels = dataset.table["label"].to_numpy()[test_rows]
test_masks = data.load_masks(dataset.table[test_rows], IMAGE_SIZE)

# Model: a MobileNetV2 cut at two intermediate layers (random weights: no download needed)
backbone = keras.applications.MobileNetV2(
    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=0.5, include_top=False, weights=None
)
extractor = patch_feature_extractor(backbone, ("block_2_add", "block_5_add"))

# Fit: one pass over the good images, then a 10 % coreset of their patches
detector = PatchCoreDetector(extractor, coreset_ratio=0.1).fit(good_train_images)
print(f"memory bank: {len(detector.memory_bank_.bank_)} patches of {detector.memory_bank_.n_patches_seen_}")

# Score: higher = more anomalous, for images and pixels alike
test_scores, anomaly_maps = detector.score_images_with_maps(test_images)

# Look at the result
print(f"image AUROC {metrics.image_auroc(test_labels, test_scores):.3f}")
print(f"pixel AUROC {metrics.pixel_auroc(test_masks, anomaly_maps):.3f}")
worst = int(np.argmax(test_scores))
print(f"most anomalous test image: {dataset.table[test_rows]['path'].iloc[worst]}")
