"""The plain baseline every detector must beat: PCA on pixels + LocalOutlierFactor."""

from __future__ import annotations

from defectlab import data


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
    from defectlab.evaluation import metrics
    from defectlab.methods.scorers import PCALOFScorer

    root = data.resolve_data_root(data_dir)
    results = {}
    for category in categories or data.list_categories(root):
        dataset = data.load_category(root, category, image_size, grayscale=grayscale, seed=seed)
        scorer = PCALOFScorer(n_components, lof_neighbors, seed=seed).fit(dataset.images_of("train"))
        test_set = dataset.table["split"].isin(["val", "test"]).to_numpy()
        labels = dataset.table["label"].to_numpy()[test_set]
        scores = scorer.anomaly_score(dataset.images[test_set])
        results[category] = {
            "image_auroc": metrics.image_auroc(labels, scores),
            "tpr_tnr_best": metrics.best_tpr_tnr(labels, scores)["tpr_tnr_best"],
        }
    return results
