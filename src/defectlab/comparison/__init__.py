"""The article's comparison (box plots, mean ± std tables, published numbers) from finished runs."""

from defectlab.comparison.compare import (
    ARTICLE_CATEGORIES, COMPARED_METRICS, ComparisonError, ComparisonResult, compare_experiment, compared_methods,
    comparison_figures,
    load_published_results, method_label, published_table, summary_table, training_runs,
)

__all__ = [
    "ARTICLE_CATEGORIES", "COMPARED_METRICS", "ComparisonError", "ComparisonResult", "compare_experiment",
    "compared_methods", "comparison_figures", "load_published_results", "method_label", "published_table",
    "summary_table", "training_runs",
]
