"""The metric method's detector: embedding networks, each scored by a LocalOutlierFactor.

No TensorFlow or Keras at import: the networks are whatever object offers
Keras's ``predict_on_batch`` (a ``keras.Model`` when trained or loaded from
``.keras`` files, a `defectlab.methods.network_files.OnnxNetwork` in an
exported detector), so the exported detector scores with this very code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.exceptions import NotFittedError

from defectlab.methods.batches import predict_fixed_shape
from defectlab.methods.network_files import KERAS_FORMAT, load_network, save_network
from defectlab.methods.scorers import LOFScorer, average_standardized_scores, reference_statistics

if TYPE_CHECKING:
    import keras


def embed(embedder: keras.Model, images: np.ndarray) -> np.ndarray:
    """Pooled features of ``images``: float64 array ``(n, n_features)``.

    Batches of one fixed shape go straight to ``predict_on_batch``
    (`predict_fixed_shape`): an image's features do not depend on its batch,
    and no tf.data pipeline is built per call (~55 ms, most of a served
    single-image request).
    """
    return np.asarray(predict_fixed_shape(embedder, images), dtype=np.float64)


class EmbeddingLOFDetector:
    """Scores images with one or more (embedding network, LOF) members.

    One member: the score is its local outlier factor. Several (the article's
    ensemble): each member's scores are z-scored against that member's own
    scores on held-out good images (`scorers.standardize_scores`), then
    averaged. Higher = more anomalous in both cases.

    Parameters
    ----------
    embedders : list of keras.Model
        Networks from images to pooled features.
    lof_neighbors : int

    Attributes
    ----------
    good_embeddings_ : list of numpy.ndarray
        Each member's embeddings of the good training images (LOF is fitted on them).
    lof_scorers_ : list of LOFScorer
    reference_means_, reference_stds_ : list of float
        Each member's score mean and standard deviation on the held-out good images.
    """

    def __init__(self, embedders, lof_neighbors: int = 5):
        self.embedders = list(embedders)
        self.lof_neighbors = lof_neighbors

    @property
    def ensemble_size(self) -> int:
        return len(self.embedders)

    def fit(self, good_images: np.ndarray, heldout_good_images: np.ndarray | None = None) -> "EmbeddingLOFDetector":
        """Fit each member's LOF on its embeddings of ``good_images``; calibrate on the held-out ones.

        Without ``heldout_good_images`` the members' scores are combined unscaled
        (mean 0, std 1), which is exact for a single member.
        """
        return self.fit_embeddings(
            [embed(embedder, good_images) for embedder in self.embedders],
            heldout_good_images,
        )

    def fit_embeddings(self, good_embeddings, heldout_good_images: np.ndarray | None = None,
                       reference_statistics_: list[tuple[float, float]] | None = None) -> "EmbeddingLOFDetector":
        """`fit` from precomputed embeddings (one array per member); returns self.

        ``reference_statistics_`` (one ``(mean, std)`` per member, as saved in a
        bundle) replaces the calibration on ``heldout_good_images``.
        """
        if len(good_embeddings) != self.ensemble_size:
            raise ValueError(
                f"got embeddings of {len(good_embeddings)} member(s) for {self.ensemble_size} embedder(s)"
            )
        self.good_embeddings_ = [np.asarray(e, dtype=np.float64) for e in good_embeddings]
        self.lof_scorers_ = [LOFScorer(self.lof_neighbors).fit(e) for e in self.good_embeddings_]
        if reference_statistics_ is not None:
            self.reference_means_ = [float(mean) for mean, _ in reference_statistics_]
            self.reference_stds_ = [float(std) for _, std in reference_statistics_]
        elif heldout_good_images is not None:
            statistics = [reference_statistics(scores) for scores in self.member_scores(heldout_good_images)]
            self.reference_means_ = [mean for mean, _ in statistics]
            self.reference_stds_ = [std for _, std in statistics]
        else:
            self.reference_means_ = [0.0] * self.ensemble_size
            self.reference_stds_ = [1.0] * self.ensemble_size
        return self

    def member_scores(self, images: np.ndarray) -> list[np.ndarray]:
        """Each member's raw LOF scores of ``images`` (list of arrays of shape ``(n,)``)."""
        if not hasattr(self, "lof_scorers_"):
            raise NotFittedError("EmbeddingLOFDetector is not fitted yet; call fit first")
        return [
            scorer.anomaly_score(embed(embedder, images))
            for embedder, scorer in zip(self.embedders, self.lof_scorers_)
        ]

    def combine(self, member_scores: list[np.ndarray]) -> np.ndarray:
        """The detector's score from the members' raw scores; higher = more anomalous."""
        if self.ensemble_size == 1:
            return np.asarray(member_scores[0], dtype=np.float64)
        return average_standardized_scores(
            member_scores, self.reference_means_, self.reference_stds_
        )

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """Anomaly score per image, shape ``(n,)``; higher = more anomalous."""
        return self.combine(self.member_scores(images))

    def ensemble_model(self) -> keras.Model:
        """All members as one Keras model: images in, one embedding per member out (logged as ``model``)."""
        import keras

        if self.ensemble_size == 1:
            return self.embedders[0]
        inputs = keras.Input(shape=self.embedders[0].input_shape[1:], name="image")
        # Each member wrapped under its own name: the embedders all call themselves "embedding_model".
        outputs = [
            keras.Model(embedder.inputs, embedder.outputs, name=f"member_{index}")(inputs)
            for index, embedder in enumerate(self.embedders)
        ]
        return keras.Model(inputs, outputs, name=f"l2_softmax_ensemble_of_{self.ensemble_size}")

    def save(self, folder: Path, network_format: str = KERAS_FORMAT) -> dict:
        """Write members as plain files (``.keras`` or ``.onnx``, and ``.npy``); returns the JSON-able description."""
        folder = Path(folder)
        members = []
        for index, (embedder, embeddings) in enumerate(zip(self.embedders, self.good_embeddings_)):
            np.save(folder / f"member_{index}_good_embeddings.npy", embeddings, allow_pickle=False)
            members.append(
                {
                    "embedder": save_network(embedder, folder, f"member_{index}", network_format),
                    "good_embeddings": f"member_{index}_good_embeddings.npy",
                    "reference_mean": self.reference_means_[index],
                    "reference_std": self.reference_stds_[index],
                }
            )
        return {"lof_neighbors": self.lof_neighbors, "members": members}

    @classmethod
    def load(cls, folder: Path, description: dict) -> "EmbeddingLOFDetector":
        """The detector saved by `save`; LOF is refitted from the stored embeddings.

        Members saved as ``.onnx`` load without TensorFlow (`load_network`).
        """
        folder = Path(folder)
        members = description["members"]
        detector = cls(
            [load_network(folder / member["embedder"]) for member in members],
            lof_neighbors=int(description["lof_neighbors"]),
        )
        return detector.fit_embeddings(
            [np.load(folder / m["good_embeddings"], allow_pickle=False) for m in members],
            reference_statistics_=[(m["reference_mean"], m["reference_std"]) for m in members],
        )
