"""L2-softmax metric learning on the built-in dataset: the target against reference classes, LOF on embeddings.

Reads top to bottom: setup, data, model, fit, score, look at the result. No
MLflow: the tracked version of the same is `defectlab metric`.
"""

import keras

from defectlab import data
from defectlab.evaluation import metrics
from defectlab.methods.metric import MetricConfig
from defectlab.methods.metric.network import embedding_model
from defectlab.methods.metric.training import EmbeddingLOFDetector, load_reference_set, train_l2_softmax

# Setup: CPU-sized settings; pseudo_defects adds synthesised defects of carpet as one more class
config = MetricConfig(category="carpet", image_size=64, epochs=2, batch_size=32, weights="none",
                      reference_size=64, pseudo_defects=64)
keras.utils.set_random_seed(config.seed)

# Data: carpet's good images (class 0) and the other categories' good images (the references)
dataset = data.load_category(config.data_dir, config.category, config.image_size, seed=config.seed)
references = load_reference_set(dataset.root, config.category, config.image_size,
                                reference_size=config.reference_size, pseudo_defects=config.pseudo_defects)

# Model and fit: MobileNetV2 with an L2-softmax head, trained to tell the classes apart
classifier, history = train_l2_softmax(dataset.images_of("train"), references, config, None, seed=config.seed,
                                       verbose=0)
print(f"final training loss {history.history['loss'][-1]:.3f}")

# Score: LOF on the pooled embeddings, fitted on the good train images
detector = EmbeddingLOFDetector([embedding_model(classifier)], lof_neighbors=config.lof_neighbors)
detector.fit(dataset.images_of("train"), dataset.images_of("threshold"))
test_rows = dataset.rows("test")
test_scores = detector.score_images(dataset.images[test_rows])

# Look at the result
test_labels = dataset.table["label"].to_numpy()[test_rows]
print(f"image AUROC {metrics.image_auroc(test_labels, test_scores):.3f}")
