"""Evaluation: from scores (and maps) to the contract's metrics and figures, one path for every method.

- `evaluate`: thresholds and image metrics of a run (`Evaluation`);
- `metrics`: AUROC, TPR+TNR, pixel AUROC, AUPRO (hand-checked in the tests);
- `pixel`: pixel metrics and heatmaps of map-making methods;
- `figures`: ROC, histograms, ranked grids, heatmaps, comparison box plots.
"""

from defectlab.evaluation.evaluate import (
    SCORED_SPLITS, SCORES_COLUMNS, CollapsedModelError, Evaluation, check_scores_vary, evaluate, scored_rows,
)

__all__ = [
    "SCORED_SPLITS", "SCORES_COLUMNS", "CollapsedModelError", "Evaluation", "check_scores_vary",
    "evaluate", "scored_rows",
]
