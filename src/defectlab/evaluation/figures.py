"""Figures of one evaluated run: ROC, score histograms, anomaly-ranked image grids.

Every function returns a `matplotlib.figure.Figure` and does no I/O; the
caller (``tracking``) logs or saves it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (servers, CI)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

RANKED_GRID_SIZE = 12


def roc_figure(labels, scores, title: str = "ROC (test split)") -> Figure:
    """ROC curve, defects positive, with the AUROC in the legend."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    area = float(np.trapezoid(true_positive_rate, false_positive_rate))
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot(false_positive_rate, true_positive_rate, label=f"AUROC = {area:.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("false positive rate (good images flagged)")
    axes.set_ylabel("true positive rate (defects found)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


HISTOGRAM_CLIP_QUANTILE = 0.99
# The axis is clipped only when the scores above the quantile would stretch it by more than this share.
HISTOGRAM_CLIP_STRETCH = 0.25
FLAGGED_COLOUR = "tab:red"
PASSED_COLOUR = "0.7"


def histogram_range(scores, threshold: float | None = None) -> tuple[float, float, int]:
    """``(low, high, clipped)``: the histogram's axis and how many scores lie above it.

    The axis ends at the `HISTOGRAM_CLIP_QUANTILE` quantile (taken as an
    observed score, so one outlier of a hundred images is left out; or the
    threshold, if higher) when the scores beyond it would stretch it by more
    than `HISTOGRAM_CLIP_STRETCH`; otherwise it holds every finite score
    (``clipped`` 0, or the count of infinite ones). ``low < high`` always.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    marks = [float(threshold)] if threshold is not None and np.isfinite(threshold) else []
    if len(finite) == 0:
        low = marks[0] if marks else 0.0
        return low - 0.5, low + 0.5, int(np.sum(np.isposinf(scores)))
    low = min([float(finite.min()), *marks])
    highest = max([float(finite.max()), *marks])
    high = max([float(np.quantile(finite, HISTOGRAM_CLIP_QUANTILE, method="lower")), *marks])
    if high <= low or highest - high <= HISTOGRAM_CLIP_STRETCH * (high - low):
        high = highest
    if high <= low:
        low, high = low - 0.5, low + 0.5
    return low, high, int(np.sum(scores > high))


def score_histogram_figure(
    labels, scores, threshold: float | None = None, title: str = "Anomaly scores (test split)"
) -> Figure:
    """Overlaid histograms of good and defect scores, with the deployed threshold.

    A few outlying scores do not stretch the axis: beyond `histogram_range`
    they are counted into the last bin, and the figure says how many.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    figure, axes = plt.subplots(figsize=(6, 4))
    low, high, clipped = histogram_range(scores, threshold)
    bins = np.linspace(low, high, 31)
    shown = np.clip(scores, low, high)
    axes.hist(shown[labels == 0], bins=bins, alpha=0.6, label="good", color="tab:blue")
    axes.hist(shown[labels == 1], bins=bins, alpha=0.6, label="defect", color="tab:red")
    if threshold is not None and np.isfinite(threshold):
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    axes.set_xlabel("anomaly score (higher = more anomalous)")
    axes.set_ylabel("images")
    if clipped:
        title = f"{title}\n{clipped} score(s) above {high:.3g} drawn in the last bin"
    axes.set_title(title, fontsize=10 if clipped else None)
    axes.legend()
    figure.tight_layout()
    return figure


def ranked_grid_figure(
    images: np.ndarray,
    scores,
    defect_types,
    title: str,
    columns: int = 4,
    threshold: float | None = None,
) -> Figure:
    """Grid of images, each tile titled with its score and defect type (in the given order).

    With the deployed ``threshold`` each tile is framed and labelled: red and
    "flagged" above it (what the deployed detector reports), grey "passed" below.
    """
    count = len(images)
    rows = max(1, int(np.ceil(count / columns)))
    marked = threshold is not None and np.isfinite(threshold)
    header = 1.15 if marked else 0.85  # inches above the tiles: one more title line for the threshold
    height = 2.9 * rows + header - 0.45
    # A fixed layout (inches, from the figure's size): tight_layout drew the whole figure once more to
    # measure it, half of the grid's cost, for tiles that are all alike (two title lines, no axes).
    figure, axes_grid = plt.subplots(
        rows, columns, figsize=(2.6 * columns, height),
        gridspec_kw={"left": 0.1 / (2.6 * columns), "right": 1 - 0.1 / (2.6 * columns),
                     "bottom": 0.1 / height, "top": 1 - header / height, "wspace": 0.08, "hspace": 0.3},
    )
    axes_list = np.atleast_1d(axes_grid).ravel()
    for axes in axes_list:
        axes.axis("off")
    for axes, image, score, defect_type in zip(axes_list, images, scores, defect_types):
        shown = image[..., 0] if image.shape[-1] == 1 else image
        axes.imshow(
            shown, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255,
            interpolation="nearest",  # resampling each tile dominated the grid's render time
        )
        label = f"{defect_type}\nscore {float(score):.3g}"
        if marked:
            flagged = float(score) > threshold
            colour = FLAGGED_COLOUR if flagged else PASSED_COLOUR
            label += "  flagged" if flagged else "  passed"
            axes.add_patch(Rectangle(
                (0, 0), 1, 1, transform=axes.transAxes, fill=False, edgecolor=colour, linewidth=4, clip_on=False,
            ))
        axes.set_title(label, fontsize=9, color=FLAGGED_COLOUR if marked and float(score) > threshold else "black")
    if count == 0:
        axes_list[0].text(0.5, 0.5, "no images", ha="center", va="center")
    if marked:
        title = f"{title}\nthreshold {threshold:.4g}: red = flagged by the deployed detector"
    figure.suptitle(title, y=1 - 0.1 / height, verticalalignment="top", fontsize=10 if marked else None)
    return figure


def ranked_indices(labels, scores, count: int = RANKED_GRID_SIZE) -> dict[str, np.ndarray]:
    """Indices for the three ranked grids, each in display order.

    ``top_defects``: most anomalous defect images; ``hard_defects``: least
    anomalous defect images (the misses); ``false_alarms``: most anomalous good images.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    defect_index = np.flatnonzero(labels == 1)
    good_index = np.flatnonzero(labels == 0)
    defects_by_score = defect_index[np.argsort(-scores[defect_index], kind="stable")]
    goods_by_score = good_index[np.argsort(-scores[good_index], kind="stable")]
    return {
        "top_defects": defects_by_score[:count],
        "hard_defects": defects_by_score[::-1][:count],
        "false_alarms": goods_by_score[:count],
    }


RANKED_TITLES = {
    "top_defects": "Most anomalous defect images",
    "hard_defects": "Least anomalous defect images (hardest to find)",
    "false_alarms": "Most anomalous good images (false alarms)",
}


REFERENCE_LINE_STYLES = ("--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)))


def comparison_boxplot_figure(
    values_by_method: dict[str, list[float]],
    reference_lines: list[tuple[str, float]],
    title: str,
    value_label: str,
    value_range: tuple[float, float],
    notes: list[str] | None = None,
    intervals: dict[str, tuple[float, float]] | None = None,
) -> Figure:
    """Box plot of one metric over repeated runs, one box per method, with named reference lines.

    Parameters
    ----------
    values_by_method : dict of {method label: list of float}
        The metric of every run of each method, in display order. A method
        with no values is drawn as the text "missing (no runs)", never as zero.
    reference_lines : list of (label, value)
        Published numbers, each a horizontal line named in the legend.
    title, value_label : str
        Figure title and y-axis label.
    value_range : (float, float)
        Fixed y-axis range (the metric's possible range), so figures compare at a glance.
    notes : list of str, optional
        Caveats printed under the axes (missing methods, unconfirmed references).
    intervals : dict of {method label: (low, high)}, optional
        A run's bootstrap 95 % interval of the metric (averaged over repeats),
        drawn as a capped bar to the right of the method's box.
    """
    method_labels = list(values_by_method)
    positions = np.arange(1, len(method_labels) + 1)
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for position, label in zip(positions, method_labels):
        values = np.asarray(values_by_method[label], dtype=np.float64)
        if values.size == 0:
            axes.text(position, np.mean(value_range), "missing\n(no runs)", ha="center",
                      va="center", color="dimgray", fontsize=10, style="italic")
            continue
        axes.boxplot(values, positions=[position], widths=0.5, showmeans=True, showfliers=False,
                     manage_ticks=False,
                     meanprops={"marker": "^", "markerfacecolor": "black", "markeredgecolor": "black"})
        # Repeats are few: show every run, spread sideways so equal values stay visible.
        offsets = np.linspace(-0.12, 0.12, values.size) if values.size > 1 else np.zeros(1)
        axes.scatter(position + offsets, values, s=18, color="tab:blue", alpha=0.7, zorder=3)
        low, high = (intervals or {}).get(label, (np.nan, np.nan))
        if np.isfinite(low) and np.isfinite(high):
            middle = (low + high) / 2
            axes.errorbar(position + 0.33, middle, yerr=[[middle - low], [high - middle]], fmt="none",
                          ecolor="tab:red", capsize=4, linewidth=1.5, zorder=3,
                          label="bootstrap 95 % interval of a run" if position == positions[0] else None)
    axes.set_xticks(positions, [
        f"{label}\n(n={len(values_by_method[label])})" for label in method_labels
    ])
    axes.set_xlim(0.4, len(method_labels) + 0.6)
    for line_index, (label, value) in enumerate(reference_lines):
        axes.axhline(
            value, color=plt.cm.tab10((line_index + 1) % 10),
            linestyle=REFERENCE_LINE_STYLES[line_index % len(REFERENCE_LINE_STYLES)],
            linewidth=1.5, label=f"{label}: {value:.2f}",
        )
    axes.set_ylim(*value_range)
    axes.set_ylabel(value_label)
    axes.set_xlabel("method (box: runs over repeats; triangle: mean)")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    if reference_lines:
        axes.legend(title="published", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if notes:
        figure.text(0.01, 0.01, "\n".join(notes), fontsize=8, va="bottom", wrap=True)
    figure.tight_layout(rect=(0, 0.04 + 0.035 * len(notes or []), 1, 1))
    return figure


def save_figure(figure: Figure, path, dpi: int = 110) -> None:
    """Write a figure as a PNG file and free it."""
    try:
        figure.savefig(path, dpi=dpi)
    finally:
        plt.close(figure)


HEATMAP_ROWS = 6


def heatmap_figure(
    images: np.ndarray,
    anomaly_maps: np.ndarray,
    masks: np.ndarray | None,
    scores,
    defect_types,
    title: str,
    extra_panels: list | None = None,
    threshold: float | None = None,
) -> Figure:
    """One row per image: input, the method's extra panels, anomaly map, ground-truth mask.

    With the deployed ``threshold`` the map panel outlines, in cyan, the one
    region where the map is above it, no other levels.

    Parameters
    ----------
    images : numpy.ndarray, uint8, (n, h, w, channels)
    anomaly_maps : numpy.ndarray, float, (n, h, w)
        Higher = more anomalous; every map is drawn on the same colour scale
        (0 to the largest value shown) so rows compare.
    masks : numpy.ndarray of bool, (n, h, w), or None
        Ground truth; a row without defect pixels says "no mask".
    scores, defect_types : sequences of length n
        Shown in each row's first title.
    extra_panels : list of (title, numpy.ndarray float in [0, 1] (n, h, w, channels)), optional
        Columns between the input and the map (e.g. the SSIM autoencoder's reconstruction).
    """
    extra_panels = list(extra_panels or [])
    outlined = threshold is not None and np.isfinite(threshold)
    map_name = f"anomaly map\n(cyan: above {threshold:.3g})" if outlined else "anomaly map"
    column_names = ["input", *(name for name, _ in extra_panels), map_name, "ground truth"]
    count = len(images)
    rows = max(1, count)
    figure, axes_grid = plt.subplots(
        rows, len(column_names), figsize=(2.4 * len(column_names), 2.5 * rows + 0.5),
        squeeze=False,
    )
    for axes in axes_grid.ravel():
        axes.axis("off")
    if count == 0:
        axes_grid[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    map_limit = float(np.max(anomaly_maps)) if count else 1.0
    map_column, mask_column = len(column_names) - 2, len(column_names) - 1
    for row in range(count):
        grayscale = images[row].shape[-1] == 1
        colour_map = "gray" if grayscale else None
        shown_image = images[row][..., 0] if grayscale else images[row]
        axes_grid[row, 0].imshow(shown_image, cmap=colour_map, vmin=0, vmax=255)
        axes_grid[row, 0].set_title(f"{defect_types[row]}\nscore {float(scores[row]):.3g}", fontsize=9)
        for column, (_, panel_images) in enumerate(extra_panels, start=1):
            panel = np.clip(panel_images[row], 0.0, 1.0)
            shown_panel = panel[..., 0] if panel.ndim == 3 and panel.shape[-1] == 1 else panel
            axes_grid[row, column].imshow(shown_panel, cmap=colour_map, vmin=0.0, vmax=1.0)
        axes_grid[row, map_column].imshow(
            anomaly_maps[row], cmap="inferno", vmin=0.0, vmax=max(map_limit, 1e-12)
        )
        above = np.asarray(anomaly_maps[row]) > threshold if outlined else None
        if above is not None and above.any() and not above.all():
            axes_grid[row, map_column].contour(above.astype(float), levels=[0.5], colors="cyan", linewidths=1.2)
        if masks is not None and masks[row].any():
            axes_grid[row, mask_column].imshow(masks[row], cmap="gray", vmin=0, vmax=1)
        else:
            axes_grid[row, mask_column].text(0.5, 0.5, "no mask", ha="center", va="center", fontsize=9)
    for column, name in enumerate(column_names):
        axes_grid[0, column].set_title(
            f"{axes_grid[0, column].get_title()}\n{name}".strip() if column == 0 else name, fontsize=9
        )
    figure.suptitle(title)
    figure.tight_layout()
    return figure


OVERLAY_MIN_SIDE = 256  # small images are enlarged (nearest neighbour) so a defect can be seen
OVERLAY_ALPHA = 0.55
OVERLAY_CONTOUR_COLOUR = (0, 255, 255)


def anomaly_overlay_image(image: np.ndarray, anomaly_map: np.ndarray, threshold: float, title: str) -> np.ndarray:
    """The image beside its anomaly map laid over it, with the contour where the map reaches ``threshold``.

    Drawn with NumPy and Pillow, not a Matplotlib figure: ``predict`` writes one
    per flagged image and must keep up with the detector.

    Parameters
    ----------
    image : numpy.ndarray, uint8, (h, w, channels)
    anomaly_map : numpy.ndarray, float, (h, w)
        Higher = more anomalous, in the units of the detector's scores. The
        colour scale (inferno) runs from 0 to twice ``threshold`` (the
        threshold in its middle), the same for every image, so overlays compare.
    threshold : float
        The detector's image threshold; the contour (cyan) is the border of
        the region where the map is above it (none where it never is).
    title : str
        Written above the panels (e.g. the file name and score).

    Returns
    -------
    numpy.ndarray, uint8, (title + scale * h, 2 * scale * w + gap, 3)
    """
    from PIL import Image, ImageDraw

    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    map_limit = 2.0 * threshold if threshold > 0 else float(np.max(anomaly_map))
    scaled = np.clip(np.asarray(anomaly_map, dtype=np.float64) / max(map_limit, 1e-12), 0.0, 1.0)
    coloured = plt.get_cmap("inferno")(scaled)[..., :3] * 255.0
    blended = (1 - OVERLAY_ALPHA) * rgb.astype(np.float64) + OVERLAY_ALPHA * coloured
    above = np.asarray(anomaly_map) > threshold
    inside = above.copy()
    inside[1:, :] &= above[:-1, :]
    inside[:-1, :] &= above[1:, :]
    inside[:, 1:] &= above[:, :-1]
    inside[:, :-1] &= above[:, 1:]
    blended[above & ~inside] = OVERLAY_CONTOUR_COLOUR
    scale = max(1, -(-OVERLAY_MIN_SIDE // max(image.shape[:2])))
    panels = [panel.astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1) for panel in (rgb, blended)]
    height, width = panels[0].shape[:2]
    gap, title_height = 8, 18
    canvas = np.full((title_height + height, 2 * width + gap, 3), 255, dtype=np.uint8)
    canvas[title_height:, :width] = panels[0]
    canvas[title_height:, width + gap:] = panels[1]
    drawn = Image.fromarray(canvas)
    ImageDraw.Draw(drawn).text((2, 3), f"{title}  (map: threshold {threshold:.3g}, contour)", fill=(0, 0, 0))
    return np.asarray(drawn)

