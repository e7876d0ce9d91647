"""The SSIM autoencoder on the built-in dataset: reconstruct good images, flag what it cannot.

Reads top to bottom: setup, data, model, fit, score, look at the result. No
MLflow: the tracked version of the same is `defectlab ssim`.
"""

import keras

from defectlab import data
from defectlab.evaluation import metrics
from defectlab.methods.ssim import SSIMConfig
from defectlab.methods.ssim.training import SSIMDetectorScorer, min_defect_area_for, train_ssim_autoencoder

# Setup: CPU-sized settings (the paper trains 200 epochs on 10000 augmented crops)
config = SSIMConfig(category="carpet", image_size=64, epochs=2, batch_size=32, augment_to=256, latent_dim=32)
keras.utils.set_random_seed(config.seed)

# Data: grayscale good images to learn from
dataset = data.load_category(config.data_dir, config.category, config.image_size, grayscale=True,
                             seed=config.seed)

# Model and fit: the convolutional autoencoder, SSIM loss, augmented on the fly
autoencoder, history = train_ssim_autoencoder(dataset.images_of("train"), config, seed=config.seed, verbose=0)
print(f"final training loss {history.history['loss'][-1]:.3f}")

# Score: per-pixel 1 - SSIM maps, the image score from their largest region
detector = SSIMDetectorScorer(autoencoder, config.ssim_window, min_defect_area_for(config.image_size))
test_rows = dataset.rows("test")
test_scores, anomaly_maps = detector.score_images_with_maps(dataset.images[test_rows])

# Look at the result
test_labels = dataset.table["label"].to_numpy()[test_rows]
test_masks = data.load_masks(dataset.table[test_rows], config.image_size)
print(f"image AUROC {metrics.image_auroc(test_labels, test_scores):.3f}")
print(f"pixel AUROC {metrics.pixel_auroc(test_masks, anomaly_maps):.3f}")
