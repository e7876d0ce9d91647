"""PatchCore's coreset: which good patches the memory bank keeps.

Two selections of ``ceil(ratio * n_patches)`` patches, both greedy k-center
(each new patch is the one farthest from those already kept, so rare good
patches are kept as well as common ones):

* `greedy_coreset_indices`: the exact rule over all patches, as in the paper.
  Each step streams every patch once, so the time is
  ``n_patches x n_keep x dim``: 13 minutes for the 650,000 patches of an
  MVTec-sized category at 224 px on a 2-core CPU.
* `clustered_coreset_indices` (what the memory bank uses): the same rule
  inside the parts of a k-means partition of the patches (faiss). A step
  takes the part whose farthest patch is farthest of all (a heap), so the
  parts share the budget as the global rule would, and updates only that
  part: ``PART_SIZE`` rows instead of every patch. The time becomes
  ``n_patches x n_keep x dim / n_parts``, linear in the patches for a fixed
  ``coreset_ratio``. Inputs of at most ``PART_SIZE`` patches are one part,
  where it is the exact rule.

Both measure distances after a seeded Gaussian random projection to
``projection_dim`` channels (PatchCore's 128), in float32, on contiguous
arrays, with a running minimum per patch instead of an ``N x N`` matrix.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from defectlab.methods.patch.arrays import (
    FLOAT32_BYTES, INT64_BYTES, as_feature_matrix, check_positive_int, check_ratio,
)

DEFAULT_PROJECTION_DIM = 128
# Rows handled at once when projecting or taking norms: 16384 rows of 1024
# float32 channels are 64 MiB, small next to any bank worth a coreset.
DEFAULT_ROW_CHUNK = 16384
# Patches per part of the clustered selection. Measured on 655,424 ImageNet
# MobileNetV2 patches of 209 magnetic tile images at 224 px, coreset 0.1
# (benchmarks/bench_patch.py): 8192 selects in 13 s on one core against 13
# minutes for the exact rule, with the same image and pixel AUROC (within 0.005);
# smaller parts are faster still but split dense regions of patch space between
# parts, which then each keep a copy of them.
PART_SIZE = 8192
# k-means of the partition: trained on this many patches per part, a few iterations
# (the parts need to be compact, not optimal).
KMEANS_POINTS_PER_PART = 64
KMEANS_ITERATIONS = 10


def coreset_size(n_patches: int, ratio: float) -> int:
    """How many patches a coreset of ``ratio`` keeps out of ``n_patches``: ``ceil(ratio * n)``, at least 1.

    The product is rounded to 6 decimals before the ceiling so that float noise
    (``0.7 * 10`` is ``7.000000000000001``) does not keep one patch too many.
    """
    ratio = check_ratio(ratio)
    n_patches = check_positive_int(n_patches, "n_patches")
    return min(n_patches, max(1, math.ceil(round(ratio * n_patches, 6))))


def number_of_parts(n_patches: int, n_keep: int) -> int:
    """Parts of the clustered selection: one per `PART_SIZE` patches, never more than patches kept."""
    return max(1, min(math.ceil(n_patches / PART_SIZE), n_keep))


def coreset_selection_bytes(n_patches: int, feature_dim: int, ratio: float,
                            projection_dim: int = DEFAULT_PROJECTION_DIM) -> int:
    """Memory `clustered_coreset_indices` adds to the patches it is given (0 when all are kept).

    The projected (or centred) copy, two float32 vectors (norms, running
    minimum) and, with more than one part, two int64 vectors (part of each
    patch, the order that groups the parts).
    """
    n_keep = coreset_size(n_patches, ratio)
    if n_keep == n_patches:
        return 0
    selection_dim = min(int(feature_dim), int(projection_dim))
    per_patch = (selection_dim + 2) * FLOAT32_BYTES
    if number_of_parts(n_patches, n_keep) > 1:
        per_patch += 2 * INT64_BYTES
    return int(n_patches) * per_patch


# Projection


def _row_squared_norms(matrix: np.ndarray, chunk_rows: int = DEFAULT_ROW_CHUNK) -> np.ndarray:
    """``||row||^2`` of every row, float32, computed chunk by chunk (no full-size temporary)."""
    norms = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), chunk_rows):
        chunk = matrix[start : start + chunk_rows]
        norms[start : start + chunk_rows] = np.einsum("ij,ij->i", chunk, chunk)
    return norms


class _Projection:
    """Centring and a seeded Gaussian random projection to at most ``projection_dim`` channels.

    A Gaussian matrix scaled by ``1/sqrt(projection_dim)`` keeps pairwise
    distances within a small factor (Johnson-Lindenstrauss), which is all the
    greedy selection needs, and makes each distance cost ``projection_dim``
    instead of ``feature_dim`` operations. Features that already have at most
    ``projection_dim`` channels are only centred (projecting up adds cost and
    no accuracy). Centring does not change distances, but it shrinks the norms
    in the ``||a||^2 - 2ab + ||b||^2`` expansion, and with them float32's
    cancellation error.
    """

    def __init__(self, features: np.ndarray, projection_dim: int, rng: np.random.Generator):
        feature_dim = features.shape[1]
        self.mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.matrix = None
        if feature_dim > projection_dim:
            self.matrix = rng.standard_normal((feature_dim, projection_dim), dtype=np.float32)
            self.matrix /= np.float32(math.sqrt(projection_dim))
        self.dim = feature_dim if self.matrix is None else projection_dim

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        centred = rows - self.mean
        return centred if self.matrix is None else centred @ self.matrix

    def all_rows(self, features: np.ndarray, order: np.ndarray | None = None,
                 chunk_rows: int = DEFAULT_ROW_CHUNK) -> np.ndarray:
        """Every row projected, in ``order`` (default: as given), chunk by chunk into one array."""
        projected = np.empty((len(features), self.dim), dtype=np.float32)
        for start in range(0, len(features), chunk_rows):
            rows = slice(start, start + chunk_rows)
            projected[rows] = self(features[rows] if order is None else features[order[rows]])
        return projected


# Exact greedy k-center


def greedy_coreset_indices(
    features, ratio: float, projection_dim: int = DEFAULT_PROJECTION_DIM, seed: int = 0
) -> np.ndarray:
    """Indices of an exact greedy k-center coreset of ``features`` (PatchCore's subsampling).

    Starting from one seeded random patch, each step adds the patch farthest
    from everything chosen so far (the k-center rule), so the kept patches
    cover the feature space evenly, rare good patches included, instead of
    following the density like random sampling would.

    Parameters
    ----------
    features : array-like of shape (n_patches, feature_dim)
        Patch features of the defect-free training images.
    ratio : float in (0, 1]
        Fraction to keep: ``ceil(ratio * n_patches)`` patches, at least 1 (see
        `coreset_size`). ``1`` returns every index, in order, without selection.
    projection_dim : int, default=128
        Distances are measured after a seeded Gaussian random projection to
        this many dimensions (PatchCore uses a random linear map to 128), or on
        the features themselves when they have no more channels than this.
    seed : int, default=0
        Seeds both the start patch and the projection: the same inputs and seed
        give the same indices.

    Returns
    -------
    numpy.ndarray of int64, shape (n_keep,)
        Distinct row indices in selection order (``indices[0]`` is the start
        patch), except when every patch is kept (``ratio == 1``, or a ratio
        whose ceiling reaches ``n_patches``): then ``arange(n_patches)``.

    Raises
    ------
    ValueError
        ``ratio`` outside (0, 1], ``features`` not a non-empty finite 2-D
        array, or ``projection_dim`` not a positive integer.

    Notes
    -----
    Time is O(n_patches * n_keep * dim): for large inputs use
    `clustered_coreset_indices`. Squared distances are compared throughout
    (the order is the same as for distances, and no square root is spent).
    """
    ratio = check_ratio(ratio)
    projection_dim = check_positive_int(projection_dim, "projection_dim")
    features = as_feature_matrix(features, "features")
    n_patches = len(features)
    n_keep = coreset_size(n_patches, ratio)
    if n_keep == n_patches:
        return np.arange(n_patches, dtype=np.int64)

    rng = np.random.default_rng(seed)
    # The start is drawn before the projection so that it does not depend on
    # whether the features needed projecting.
    start_index = int(rng.integers(n_patches))
    projected = _Projection(features, projection_dim, rng).all_rows(features)
    part = _GreedyPart(projected)
    selected = np.empty(n_keep, dtype=np.int64)
    selected[0] = start_index
    part.add_center(start_index)
    for step in range(1, n_keep):
        selected[step] = part.add_center(part.farthest())
    return selected


class _GreedyPart:
    """The greedy rule's state over some projected patches: each one's squared distance to the chosen set.

    ``projected`` is a contiguous ``(n, p)`` float32 block; nothing is
    chosen at first (every distance infinite).
    """

    def __init__(self, projected: np.ndarray):
        self.projected = projected
        self.squared_norms = _row_squared_norms(projected)
        self.min_squared_distance = np.full(len(projected), np.inf, dtype=np.float32)
        self.farthest_row = 0

    def farthest(self) -> int:
        """The row farthest from the chosen set (a chosen row never: it sits at -1)."""
        return self.farthest_row

    def largest_distance(self) -> float:
        """The squared distance of `farthest` (-1 once every row is chosen)."""
        return float(self.min_squared_distance[self.farthest_row])

    def add_center(self, index: int) -> int:
        """Choose row ``index``: every row's distance to the set becomes min(old, distance to it)."""
        point = self.projected[index]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: one matrix-vector product, no
        # (n, p) temporary; rounding can make it slightly negative, which only
        # a chosen row (marked below) could reach.
        squared = self.squared_norms - 2.0 * (self.projected @ point)
        squared += self.squared_norms[index]
        np.minimum(self.min_squared_distance, squared, out=self.min_squared_distance)
        # A chosen row is marked below every possible distance so it is never
        # chosen twice, even when rounding leaves it a tiny positive distance to
        # itself or the data hold exact duplicates.
        self.min_squared_distance[index] = -1.0
        # Found once per step here, read by both `farthest` and `largest_distance`.
        self.farthest_row = int(np.argmax(self.min_squared_distance))
        return index


# Clustered greedy k-center


def _partition(features: np.ndarray, projection: _Projection, n_parts: int,
               rng: np.random.Generator, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means parts of the projected patches: the part of each patch, and the centroids."""
    from defectlab.methods.patch.search import import_faiss

    faiss = import_faiss()
    n_patches = len(features)
    sample_size = min(n_patches, n_parts * KMEANS_POINTS_PER_PART)
    sample = np.sort(rng.choice(n_patches, size=sample_size, replace=False))
    kmeans = faiss.Kmeans(
        projection.dim, n_parts, niter=KMEANS_ITERATIONS, seed=seed,
        max_points_per_centroid=KMEANS_POINTS_PER_PART, verbose=False,
    )
    kmeans.train(np.ascontiguousarray(projection(features[sample])))
    parts = np.empty(n_patches, dtype=np.int64)
    for start in range(0, n_patches, DEFAULT_ROW_CHUNK):
        rows = slice(start, start + DEFAULT_ROW_CHUNK)
        _, nearest = kmeans.index.search(np.ascontiguousarray(projection(features[rows])), 1)
        parts[rows] = nearest[:, 0]
    return parts, kmeans.centroids


def clustered_coreset_indices(
    features, ratio: float, projection_dim: int = DEFAULT_PROJECTION_DIM, seed: int = 0,
    on_step=None,
) -> np.ndarray:
    """Indices of a greedy k-center coreset chosen inside k-means parts of ``features``.

    Parameters
    ----------
    features : array-like of shape (n_patches, feature_dim)
    ratio : float in (0, 1]
        As in `greedy_coreset_indices`: ``ceil(ratio * n_patches)`` are kept.
    projection_dim : int, default=128
    seed : int, default=0
        Seeds the projection, the k-means sample and its initialisation.
    on_step : callable, optional
        Called with the number of patches just kept (progress reporting).

    Returns
    -------
    numpy.ndarray of int64, shape (n_keep,)
        Distinct row indices in selection order; ``arange(n_patches)`` when all
        are kept. With one part (at most `PART_SIZE` patches, or a coreset of one
        patch) this is `greedy_coreset_indices` itself.

    Notes
    -----
    The patches are split into ``ceil(n_patches / PART_SIZE)`` parts by
    k-means on a sample (faiss). Each part starts from its patch nearest its
    centroid; then every step takes the part whose farthest patch is farthest
    of all, keeps that patch and updates that part's distances only. A patch
    is thus covered by the kept patches of its own part: near a border
    between parts, a patch of the neighbouring part may already have covered
    it, so a part can keep a little more than the global rule would there.
    Memory: see `coreset_selection_bytes`.
    """
    ratio = check_ratio(ratio)
    projection_dim = check_positive_int(projection_dim, "projection_dim")
    features = as_feature_matrix(features, "features")
    n_patches = len(features)
    n_keep = coreset_size(n_patches, ratio)
    n_parts = number_of_parts(n_patches, n_keep)
    if n_keep == n_patches or n_parts == 1:
        indices = greedy_coreset_indices(features, ratio, projection_dim=projection_dim, seed=seed)
        if on_step is not None:
            on_step(len(indices))
        return indices

    rng = np.random.default_rng(seed)
    projection = _Projection(features, projection_dim, rng)
    part_of_patch, centroids = _partition(features, projection, n_parts, rng, seed)
    # Each part's patches as one contiguous block of the projected copy.
    order = np.argsort(part_of_patch, kind="stable")
    bounds = np.searchsorted(part_of_patch[order], np.arange(n_parts + 1))
    del part_of_patch
    projected = projection.all_rows(features, order)

    # Each step is one small matrix-vector product: threads cost more to wake than they save
    # (twice as slow with TensorFlow's thread pools in the same process, measured).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        selected = _select_in_parts(projected, bounds, centroids, n_keep, on_step)
    return order[np.asarray(selected[:n_keep], dtype=np.int64)]


def _select_in_parts(projected: np.ndarray, bounds: np.ndarray, centroids: np.ndarray, n_keep: int,
                     on_step) -> list[int]:
    """The greedy rule over parts (rows ``bounds[p]:bounds[p + 1]`` of ``projected``); rows in selection order."""
    n_parts = len(bounds) - 1
    selected = []
    parts, heap = {}, []
    for part_index in range(n_parts):
        start, stop = int(bounds[part_index]), int(bounds[part_index + 1])
        if stop == start:  # k-means can leave a part empty
            continue
        part = parts[part_index] = _GreedyPart(projected[start:stop])
        to_centroid = part.squared_norms - 2.0 * (part.projected @ centroids[part_index])
        selected.append(start + part.add_center(int(np.argmin(to_centroid))))
        heapq.heappush(heap, (-part.largest_distance(), part_index))
    if on_step is not None:
        on_step(len(selected))
    while len(selected) < n_keep:
        negative_distance, part_index = heapq.heappop(heap)
        if negative_distance > 0:  # every patch of every part is kept (cannot happen below n_patches)
            break
        part = parts[part_index]
        selected.append(int(bounds[part_index]) + part.add_center(part.farthest()))
        heapq.heappush(heap, (-part.largest_distance(), part_index))
        if on_step is not None:
            on_step(1)
    return selected
