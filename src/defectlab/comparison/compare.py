"""The article's comparison, rebuilt from finished MLflow training runs.

`compare_experiment` (``defectlab compare``, ``mlflow run . -e compare``)
reads every run of one experiment and keeps the FINISHED training runs: runs
tagged with a registered method's ``method`` tag that are not the parent of
other runs (the children of a ``repeats`` parent carry the metrics), nor
tuning trials (tag ``trial_number``: a trial is one point of a search, not a
repeat), nor ``evaluate`` runs (tag ``evaluated_model``); ``compare`` runs have
``method=compare``. What is left out is listed in the report's notes. It writes:

- ``figures/<dataset>-<size>px/<category>-<metric>.png``: per category, box
  plots of ``test_tpr_tnr_best`` and ``test_image_auroc`` over repeats for every
  registered method and each variant found (an ensemble size, pseudo-defects), with the published numbers of
  ``published_results.json`` drawn as named reference lines;
- ``comparison.csv``: mean, std, n, seeds and run ids per group, category and
  method, with each run's bootstrap 95 % interval (``<metric>_ci_low``/``_ci_high``,
  averaged over repeats) and ``<metric>_overlaps``: the other methods whose
  interval overlaps this one's (a difference inside them is not evidence);
- ``published.csv``: the published numbers with their sources, and a row
  "not confirmed" for each value that could not be confirmed;
- ``comparison.html``: both tables, the notes and the figures on one page;

and logs that folder as the artifacts of a ``compare`` run (tag ``method=compare``).

Groups: runs on different datasets or image sizes are never pooled. Every
(dataset, image_size) pair found is its own group, labelled e.g.
``synthetic, 64 px``, with its own table rows and figures folder.

Missing data: in the article's comparison (a group holding any of its four
categories) every registered method and the four categories are shown, and
one with no runs is reported as missing (an empty slot with a note in the
figure, ``missing`` in the tables), never as zero. On any other dataset (a
user's own) only the categories and methods that have runs are shown.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from defectlab.errors import DefectlabError
from defectlab import tracking
from defectlab.config import ConfigError
from defectlab.evaluation import figures
from defectlab.methods import all_methods, method_by_tag

ARTICLE_CATEGORIES = ("carpet", "leather", "cable", "capsule")
COMPARE_METHOD_TAG = "compare"
MISSING = "missing"
# A metric the method does not make (pixel AUROC of a method without maps).
NOT_APPLICABLE = "n/a"

# Metric key -> (axis label, fixed axis range: the metric's possible values).
COMPARED_METRICS = {
    "test_tpr_tnr_best": ("TPR + TNR at the best threshold (test split)", (0.0, 2.05)),
    "test_image_auroc": ("image-level AUROC (test split)", (0.0, 1.02)),
}
# Reported where runs have them (methods that make anomaly maps), never required of a run.
MAP_METRICS = {
    "test_pixel_auroc": ("pixel-level AUROC (test split)", (0.0, 1.02)),
}
REPORTED_METRICS = {**COMPARED_METRICS, **MAP_METRICS}
# Each run's bootstrap interval of these (older runs have none: NaN, drawn and compared without).
INTERVAL_COLUMNS = tuple(f"{metric}_ci_{end}" for metric in COMPARED_METRICS for end in ("low", "high"))


TABLE_FILE = "comparison.csv"
PUBLISHED_FILE = "published.csv"
HTML_FILE = "comparison.html"
FIGURES_DIR = "figures"


class ComparisonError(DefectlabError, ValueError):
    """The runs cannot make a comparison (e.g. the experiment holds no finished training run)."""


@dataclass(frozen=True)
class ComparisonResult:
    """What ``compare`` produced: the ``compare`` run, the report folder, the measured table."""

    run_id: str
    out_dir: Path
    table: pd.DataFrame
    figure_paths: list[Path]


# Published numbers


def load_published_results() -> dict:
    """The published numbers shipped with the package (``published_results.json``)."""
    text = resources.files("defectlab.comparison").joinpath("published_results.json").read_text(encoding="utf-8")
    return json.loads(text)


def published_table(published: dict) -> pd.DataFrame:
    """One row per published number, plus a ``not confirmed`` row per value left out."""
    sources = published["sources"]
    rows = [
        {
            "category": entry["category"],
            "metric": entry["metric"],
            "method": entry["method"],
            "value": f"{entry['value']:.2f}",
            "source": sources[entry["source"]]["citation"],
            "note": sources[entry["source"]]["note"],
        }
        for entry in published["results"]
    ]
    rows += [
        {
            "category": entry["category"],
            "metric": entry["metric"],
            "method": f"all methods of {sources[entry['source']]['label']}",
            "value": "not confirmed",
            "source": sources[entry["source"]]["citation"],
            "note": entry["reason"],
        }
        for entry in published["not_confirmed"]
    ]
    return pd.DataFrame(rows, columns=["category", "metric", "method", "value", "source", "note"])


def reference_lines(published: dict, category: str, metric: str) -> list[tuple[str, float]]:
    """(legend label, value) of every published number for one category and metric."""
    sources = published["sources"]
    return [
        (f"{entry['method']} ({sources[entry['source']]['label']})", float(entry["value"]))
        for entry in published["results"]
        if entry["category"] == category and entry["metric"] == metric
    ]


def unconfirmed_notes(published: dict, category: str, metric: str) -> list[str]:
    """One line per published value that is left out for this category and metric."""
    sources = published["sources"]
    return [
        f"{sources[entry['source']]['label']} values for {category}: not confirmed, no line drawn."
        for entry in published["not_confirmed"]
        if entry["category"] == category and entry["metric"] == metric
    ]


# Runs


def training_method_tags() -> list[str]:
    """The ``method`` tags of the registered methods."""
    return [method.tag for method in all_methods()]


def method_label(tags: dict, params: dict) -> str:
    """Display name of a training run's method (the method's own `Method.label_of_run`)."""
    tag = tags.get("method")
    try:
        return method_by_tag(tag).label_of_run(tags, params)
    except ConfigError:
        raise ComparisonError(
            f"not a training method: {tag!r} (expected one of {training_method_tags()})"
        ) from None


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column of a ``search_runs`` frame, all-missing when no run has that key."""
    if name in runs.columns:
        return runs[name]
    return pd.Series([None] * len(runs), index=runs.index, dtype=object)


def _tag_or_param(runs: pd.DataFrame, key: str) -> pd.Series:
    """Tag ``key`` where set, else param ``key`` (e.g. ``image_size`` is both)."""
    tag = _column(runs, f"tags.{key}")
    return tag.where(tag.notna(), _column(runs, f"params.{key}"))


def training_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The finished leaf training runs of a ``search_runs`` frame, and notes on what was left out.

    Returns
    -------
    training : pandas.DataFrame
        One row per run: ``run_id``, ``dataset``, ``image_size`` (int),
        ``category``, ``method`` (display label, see `method_label`), ``seed``
        and the `COMPARED_METRICS`.
    notes : list of str
        Why runs that look like training runs were not used.
    """
    columns = ["run_id", "dataset", "image_size", "category", "method", "seed", *REPORTED_METRICS,
               *INTERVAL_COLUMNS]
    if runs.empty:
        return pd.DataFrame(columns=columns), []
    parent_run_ids = set(_column(runs, "tags.mlflow.parentRunId").dropna())
    repeats = pd.to_numeric(_column(runs, "tags.repeats"), errors="coerce").fillna(1)
    # `evaluate` runs carry the detector's method tag too; their tag `evaluated_model` tells them apart.
    is_training = _column(runs, "tags.method").isin(training_method_tags()) & _column(
        runs, "tags.evaluated_model"
    ).isna()
    is_parent = runs["run_id"].isin(parent_run_ids) | (repeats > 1)
    is_finished = runs["status"] == "FINISHED"

    # A tuning trial is one point of a search over settings, not a repeat of one setting.
    is_trial = _column(runs, "tags.trial_number").notna()
    notes = []
    trials = runs[is_training & ~is_parent & is_trial]
    if len(trials):
        notes.append(
            f"{len(trials)} tuning trial run(s) (tag trial_number) were left out: trials vary the "
            "settings, so they are not repeats of one setting."
        )
    is_training &= ~is_trial
    unfinished = runs[is_training & ~is_parent & ~is_finished]
    if len(unfinished):
        notes.append(
            f"{len(unfinished)} training run(s) not FINISHED were left out: "
            + ", ".join(f"{run_id} ({status})" for run_id, status in zip(unfinished["run_id"], unfinished["status"]))
        )
    candidates = runs[is_training & ~is_parent & is_finished]
    metric_columns = {metric: _column(candidates, f"metrics.{metric}") for metric in COMPARED_METRICS}
    image_sizes = pd.to_numeric(_tag_or_param(candidates, "image_size"), errors="coerce")
    categories = _tag_or_param(candidates, "category")
    complete = image_sizes.notna() & categories.notna()
    for metric, values in metric_columns.items():
        complete &= pd.to_numeric(values, errors="coerce").notna()
    incomplete = candidates[~complete]
    if len(incomplete):
        notes.append(
            f"{len(incomplete)} finished training run(s) lack a category, an image size or one of "
            f"{', '.join(COMPARED_METRICS)} and were left out: {', '.join(incomplete['run_id'])}"
        )
    candidates = candidates[complete]
    # `ensemble_size` is a tag of every training run; older runs may only have the param `ensemble`.
    ensemble_sizes = pd.to_numeric(_tag_or_param(candidates, "ensemble_size"), errors="coerce")
    ensemble_sizes = ensemble_sizes.fillna(
        pd.to_numeric(_column(candidates, "params.ensemble"), errors="coerce")
    ).fillna(1)
    training = pd.DataFrame({
        "run_id": candidates["run_id"],
        "dataset": _column(candidates, "tags.dataset").fillna("unknown dataset").astype(str),
        "image_size": image_sizes[complete].astype(int),
        "category": categories[complete].astype(str),
        "method": [
            method_label(
                {"method": method, "ensemble_size": int(size)},
                {"pseudo_defects": pseudo_defects},
            )
            for method, size, pseudo_defects in zip(
                _column(candidates, "tags.method"), ensemble_sizes,
                _column(candidates, "params.pseudo_defects"),
            )
        ],
        "seed": pd.to_numeric(_column(candidates, "params.seed"), errors="coerce"),
        **{metric: pd.to_numeric(values[complete]) for metric, values in metric_columns.items()},
        **{metric: pd.to_numeric(_column(candidates, f"metrics.{metric}"), errors="coerce")
           for metric in (*MAP_METRICS, *INTERVAL_COLUMNS)},
    }, columns=columns)
    return training.reset_index(drop=True), notes


def group_label(dataset: str, image_size: int) -> str:
    """How a (dataset, image size) group is named in tables and titles."""
    return f"{dataset}, {image_size} px"


def group_folder(dataset: str, image_size: int) -> str:
    """A file-system-safe folder name for a group."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{image_size}px")


def is_article_group(group_runs: pd.DataFrame) -> bool:
    """Whether a group holds any of the article's categories (the article's comparison, or MVTec AD)."""
    return bool(set(group_runs["category"]) & set(ARTICLE_CATEGORIES))


def compared_categories(group_runs: pd.DataFrame) -> list[str]:
    """The categories of a group: the article's four then any other with runs, in the article's
    comparison; only the categories with runs on any other dataset (a user's own)."""
    others = sorted(set(group_runs["category"]) - set(ARTICLE_CATEGORIES))
    if not is_article_group(group_runs):
        return others
    return [*ARTICLE_CATEGORIES, *others]


def compared_methods(group_runs: pd.DataFrame) -> list[str]:
    """The methods of a group: every registered method's label (in the article's comparison) or only
    those with runs (on any other dataset), then each other label with runs (ensembles, variants)."""
    base_labels = [method.label for method in all_methods()]
    if not is_article_group(group_runs):
        base_labels = [label for label in base_labels if label in set(group_runs["method"])]
    variants = sorted(set(group_runs["method"]) - set(base_labels) - {method.label for method in all_methods()})
    return [*base_labels, *variants]


def summary_table(training: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (n-1), n, seeds and run ids per group, category and method.

    Every compared category and method of every group has a row; where there
    are no runs, ``n`` is 0 and the statistics are NaN (written as ``missing``).
    The std of a single run is NaN too: one run has no spread.
    """
    rows = []
    for (dataset, image_size), group_runs in training.groupby(["dataset", "image_size"], sort=True):
        for category in compared_categories(group_runs):
            for method in compared_methods(group_runs):
                runs = group_runs[(group_runs["category"] == category) & (group_runs["method"] == method)]
                runs = runs.sort_values("seed")
                row = {
                    "group": group_label(dataset, image_size),
                    "dataset": dataset,
                    "image_size": int(image_size),
                    "category": category,
                    "method": method,
                    "n": len(runs),
                }
                for metric in REPORTED_METRICS:
                    values = runs[metric].dropna().to_numpy(dtype=np.float64)
                    row[f"{metric}_mean"] = float(np.mean(values)) if len(values) else np.nan
                    row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
                for column in INTERVAL_COLUMNS:
                    values = runs[column].dropna().to_numpy(dtype=np.float64)
                    row[column] = float(np.mean(values)) if len(values) else np.nan
                row["seeds"] = " ".join(str(int(seed)) for seed in runs["seed"].dropna()) or np.nan
                row["run_ids"] = " ".join(runs["run_id"]) or np.nan
                rows.append(row)
    table = pd.DataFrame(rows)
    for metric in COMPARED_METRICS:
        table[f"{metric}_overlaps"] = overlapping_methods(table, metric)
    return table


def intervals_overlap(first: tuple[float, float], second: tuple[float, float]) -> bool:
    """Whether two closed intervals ``(low, high)`` share a point."""
    return first[0] <= second[1] and second[0] <= first[1]


def overlapping_methods(table: pd.DataFrame, metric: str) -> list:
    """Per row of a summary table: the other methods of its group and category whose ``metric``
    interval overlaps its own (``; ``-joined, ``none``), NaN where the row has no interval."""
    low, high = table[f"{metric}_ci_low"].to_numpy(), table[f"{metric}_ci_high"].to_numpy()
    overlaps = []
    for index in range(len(table)):
        if not (np.isfinite(low[index]) and np.isfinite(high[index])):
            overlaps.append(np.nan)
            continue
        same_place = ((table["group"] == table["group"].iloc[index])
                      & (table["category"] == table["category"].iloc[index])).to_numpy()
        others = [
            table["method"].iloc[other] for other in np.flatnonzero(same_place)
            if other != index and np.isfinite(low[other]) and np.isfinite(high[other])
            and intervals_overlap((low[index], high[index]), (low[other], high[other]))
        ]
        overlaps.append("; ".join(others) or "none")
    return overlaps


def overlap_notes(table: pd.DataFrame) -> list[str]:
    """One sentence per pair of methods whose intervals overlap, per group, category and metric."""
    notes = []
    for metric in COMPARED_METRICS:
        for (group, category), rows in table.groupby(["group", "category"], sort=False):
            rows = rows[rows[f"{metric}_ci_low"].notna()]
            pairs = [
                (first, second) for position, first in enumerate(rows.itertuples())
                for second in list(rows.itertuples())[position + 1:]
                if intervals_overlap(
                    (getattr(first, f"{metric}_ci_low"), getattr(first, f"{metric}_ci_high")),
                    (getattr(second, f"{metric}_ci_low"), getattr(second, f"{metric}_ci_high")),
                )
            ]
            for first, second in pairs:
                notes.append(
                    f"{group}, {category}, {metric}: the 95 % intervals of {first.method} "
                    f"({getattr(first, metric + '_ci_low'):.3f}-{getattr(first, metric + '_ci_high'):.3f}) and "
                    f"{second.method} ({getattr(second, metric + '_ci_low'):.3f}-"
                    f"{getattr(second, metric + '_ci_high'):.3f}) overlap: their difference is not significant."
                )
    return notes


def format_mean_std(mean: float, std: float, count: int) -> str:
    """``0.912 ± 0.013``; ``0.912 (one run)``; ``missing`` when there are no runs; ``n/a`` when
    the runs have no such metric (pixel AUROC of a method without maps)."""
    if count == 0:
        return MISSING
    if np.isnan(mean):
        return NOT_APPLICABLE
    if count == 1:
        return f"{mean:.3f} (one run)"
    return f"{mean:.3f} ± {std:.3f}"


# Report


def comparison_figures(training: pd.DataFrame, published: dict):
    """Yield ``(relative path, Figure)``: one box plot per group, category and metric."""
    for (dataset, image_size), group_runs in training.groupby(["dataset", "image_size"], sort=True):
        methods = compared_methods(group_runs)
        for category in compared_categories(group_runs):
            category_runs = group_runs[group_runs["category"] == category]
            for metric, (value_label, value_range) in REPORTED_METRICS.items():
                if metric in MAP_METRICS and category_runs[metric].isna().all():
                    continue  # no map-making method ran here: no pixel-level figure to draw
                values_by_method = {
                    method: category_runs.loc[category_runs["method"] == method, metric].dropna().tolist()
                    for method in methods
                }
                notes = []
                if category_runs.empty:
                    notes.append(f"No finished runs for {category} in this group: every method missing.")
                else:
                    absent = [method for method, values in values_by_method.items() if not values]
                    if absent:
                        notes.append(f"Missing (no runs): {', '.join(absent)}.")
                notes += unconfirmed_notes(published, category, metric)
                lines = reference_lines(published, category, metric)
                if lines:
                    notes.append("Published lines were measured on real MVTec AD images.")
                intervals = {}
                if metric in COMPARED_METRICS:
                    for method in methods:
                        method_runs = category_runs[category_runs["method"] == method]
                        intervals[method] = (method_runs[f"{metric}_ci_low"].mean(),
                                             method_runs[f"{metric}_ci_high"].mean())
                figure = figures.comparison_boxplot_figure(
                    values_by_method, lines,
                    title=f"{category}: {metric} over repeats ({group_label(dataset, image_size)})",
                    value_label=value_label, value_range=value_range, notes=notes, intervals=intervals,
                )
                yield f"{FIGURES_DIR}/{group_folder(dataset, image_size)}/{category}-{metric}.png", figure


def _html_page(experiment_name: str, table: pd.DataFrame, published_rows: pd.DataFrame,
               notes: list[str], figure_paths: list[str]) -> str:
    shown = table[["group", "category", "method", "n"]].copy()
    for metric in REPORTED_METRICS:
        shown[metric + " (mean ± std)"] = [
            format_mean_std(mean, std, count)
            for mean, std, count in zip(table[f"{metric}_mean"], table[f"{metric}_std"], table["n"])
        ]
    for metric in COMPARED_METRICS:
        shown[metric + " 95 % interval"] = [
            MISSING if count == 0 else NOT_APPLICABLE if np.isnan(low) else f"{low:.3f}-{high:.3f}"
            for low, high, count in zip(table[f"{metric}_ci_low"], table[f"{metric}_ci_high"], table["n"])
        ]
        shown[metric + " overlaps"] = table[f"{metric}_overlaps"].fillna(NOT_APPLICABLE)
    shown["seeds"] = table["seeds"].fillna(MISSING)
    shown["run ids"] = table["run_ids"].fillna(MISSING)
    figure_items = "\n".join(
        f'<figure><img src="{html.escape(path)}" alt="{html.escape(path)}" width="720">'
        f"<figcaption>{html.escape(path)}</figcaption></figure>"
        for path in figure_paths
    )
    note_items = "\n".join(f"<li>{html.escape(note)}</li>" for note in notes)
    compared_labels = list(dict.fromkeys(table.loc[table["n"] > 0, "method"]))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>defectlab comparison: {html.escape(experiment_name)}</title>
<style>body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; }} figure {{ display: inline-block; }}</style>
</head><body>
<h1>{html.escape(" vs ".join(compared_labels))}: experiment {html.escape(experiment_name)}</h1>
<h2>Notes</h2>
<ul>
{note_items}
</ul>
<h2>Measured: mean ± sample std over repeats</h2>
{shown.to_html(index=False, escape=True)}
<h2>Published numbers</h2>
{published_rows.to_html(index=False, escape=True)}
<h2>Figures</h2>
{figure_items}
</body></html>
"""


def write_report(training: pd.DataFrame, notes: list[str], out_dir: Path,
                 experiment_name: str) -> tuple[pd.DataFrame, list[Path]]:
    """Write the tables, figures and HTML page of a comparison into ``out_dir``.

    Everything is written into a temporary folder first and moved into place
    at the end, so a failure leaves no half-written report. Returns the
    measured table and the figure paths.
    """
    published = load_published_results()
    table = summary_table(training)
    published_rows = published_table(published)
    all_notes = [
        "Runs are grouped by (dataset, image size); groups are never pooled.",
        "A method or category without runs is shown as 'missing', never as zero.",
        *(f"{source['label']}: {source['note']}" for source in published["sources"].values()),
        *(f"{row.category} {row.metric}: {row.note}" for row in published_rows.itertuples() if row.value == "not confirmed"),
        *notes,
        *overlap_notes(table),
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as staging_name:
        staging = Path(staging_name)
        figure_paths = []
        for relative_path, figure in comparison_figures(training, published):
            (staging / relative_path).parent.mkdir(parents=True, exist_ok=True)
            figures.save_figure(figure, staging / relative_path)
            figure_paths.append(relative_path)
        table.to_csv(staging / TABLE_FILE, index=False, na_rep=MISSING)
        published_rows.to_csv(staging / PUBLISHED_FILE, index=False)
        (staging / HTML_FILE).write_text(
            _html_page(experiment_name, table, published_rows, all_notes, figure_paths), encoding="utf-8"
        )
        # Replace only what a report owns; a stale group's figures must not linger.
        shutil.rmtree(out_dir / FIGURES_DIR, ignore_errors=True)
        for entry in staging.iterdir():
            shutil.move(str(entry), str(out_dir / entry.name))
    return table, [out_dir / path for path in figure_paths]


def compare_experiment(experiment_name: str, out_dir: str) -> ComparisonResult:
    """Build the comparison of one experiment's runs, write it to ``out_dir`` and log it as a ``compare`` run."""
    runs = tracking.search_experiment_runs(experiment_name)
    training, notes = training_runs(runs)
    if training.empty:
        raise ComparisonError(
            f"experiment {experiment_name!r} has no FINISHED training run (tag method "
            f"{' or '.join(training_method_tags())}) with {' and '.join(COMPARED_METRICS)}; "
            "train some first, e.g. `defectlab metric --repeats 3`"
        )
    table, figure_paths = write_report(training, notes, Path(out_dir), experiment_name)
    tracking.use_experiment_for_new_runs(experiment_name)
    with tracking.tracked_run(
        params={"experiment": experiment_name, "out": out_dir, "compared_runs": len(training)},
        tags={"method": COMPARE_METHOD_TAG, "compared_experiment": experiment_name},
        run_name=COMPARE_METHOD_TAG,
    ) as run:
        tracking.log_artifacts(Path(out_dir))
    return ComparisonResult(
        run_id=run.info.run_id, out_dir=Path(out_dir), table=table, figure_paths=figure_paths
    )
