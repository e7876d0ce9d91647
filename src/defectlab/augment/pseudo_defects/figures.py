"""The example grid: a figure of pseudo-defects for a run's artifacts.

`example_grid` draws each example plain and with its mask outlined, on the
Agg canvas, for ``training/pseudo_defects.png``. Matplotlib is imported
inside the function, so importing the package does not load it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from defectlab.augment.pseudo_defects.checks import PseudoDefectError, _check_batch

def example_grid(
    images: np.ndarray,
    masks: np.ndarray,
    kinds: Sequence[str],
    columns: int = 4,
    max_examples: int = 16,
    title: str = "Pseudo-defects (training)",
):
    """A figure of pseudo-defects: each example plain and with its mask outlined.

    Meant for the run artifact ``training/pseudo_defects.png``. Showing the
    plain image next to the outlined one lets a reader judge whether a
    defect is visible at all, which the outline would otherwise hide.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 (count, height, width, channels), channels 1 or 3.
    masks : numpy.ndarray
        bool (count, height, width).
    kinds : sequence of str
        Kind name per example (the panel titles).
    columns : int
        Examples per row (each takes two panels).
    max_examples : int
        Only the first this many examples are drawn.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        A figure on the Agg canvas; it does no I/O and touches no pyplot
        state, so it never opens a window. Save it with ``savefig`` or log it.

    Raises
    ------
    PseudoDefectError
        Images, masks and kinds do not describe the same examples.
    """
    # Imported here so that importing the module (e.g. in a data pipeline)
    # does not load Matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_batch(images, "images")
    masks = np.asarray(masks, dtype=bool)
    if masks.shape != images.shape[:3]:
        raise PseudoDefectError(
            f"masks must be shaped {images.shape[:3]} like the images, got {masks.shape}"
        )
    if len(kinds) != len(images):
        raise PseudoDefectError(f"got {len(kinds)} kinds for {len(images)} images")
    count = min(len(images), max(1, int(max_examples)))
    columns = max(1, min(int(columns), count))
    rows = math.ceil(count / columns)
    # Constrained layout keeps panel titles clear of the row above.
    figure = Figure(figsize=(2 * 2.1 * columns, 2.4 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    grayscale = images.shape[-1] == 1
    for index in range(count):
        row, column = divmod(index, columns)
        image = images[index, ..., 0] if grayscale else images[index]
        share = 100.0 * masks[index].mean()
        for panel, outlined in enumerate((False, True)):
            axes = figure.add_subplot(rows, 2 * columns, row * 2 * columns + 2 * column + panel + 1)
            axes.imshow(image, cmap="gray" if grayscale else None, vmin=0, vmax=255, interpolation="nearest")
            if outlined and masks[index].any():
                axes.contour(masks[index].astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
            axes.set_title(
                f"{kinds[index]}" if not outlined else f"mask {share:.1f} %", fontsize=8
            )
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle(title, fontsize=10)
    return figure
