"""Nearest bank patches with faiss: an exact flat index, or an inverted-file (IVF) index for large banks.

faiss (Johnson et al., the library PatchCore's authors search with) runs the
exact search as blocked matrix products on every core, far faster than the
NumPy search it replaced; above `AUTO_IVF_BANK` kept patches ``auto`` uses an
IVF index, which compares a query with the patches of the ``nprobe`` nearest
of ``nlist`` k-means cells only. Whichever index ranks the candidates, the
distances returned are recomputed from the differences of the winners, so a
good patch next to its bank twin keeps full float32 precision.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from defectlab.errors import DefectlabError
from defectlab.methods.patch.arrays import (
    FLOAT32_BYTES, INT64_BYTES, as_feature_matrix, check_positive_int, not_fitted_error,
)
from defectlab.methods.patch.config import SEARCH_INDEX_CHOICES

logger = logging.getLogger(__name__)

AUTO, EXACT, IVF = SEARCH_INDEX_CHOICES
# ``auto`` switches to IVF above this many bank patches. Measured (benchmarks/bench_patch.py,
# 2-core CPU): on the 16,386-patch bank of 209 magnetic tiles at 224 px (128 channels, 784
# patches per image) the exact search costs 31 ms per image, IVF 12 ms, and IVF's image and
# pixel AUROC are within 0.001 of the exact search's; on smaller banks the exact search is
# a few milliseconds.
AUTO_IVF_BANK = 10_000
# IVF's cells: about 4 sqrt(n) (faiss's guidance is 4 to 16 sqrt(n)), each
# trained from at least `IVF_POINTS_PER_CELL` bank patches (faiss warns below 39).
IVF_POINTS_PER_CELL = 39
IVF_MIN_CELLS = 16
IVF_MIN_BANK = IVF_POINTS_PER_CELL * IVF_MIN_CELLS
# Cells searched per query. Measured on ImageNet MobileNetV2 patches of magnetic tiles
# at 224 px: on a 16,386-patch bank (512 cells) nprobe 16 finds the exact nearest patch
# for 97 % of test patches (0.1 % too far on average), image / pixel AUROC within
# 0.0006 of the exact search; on a 65,543-patch bank (1024 cells) 94 % and within 0.002.
# nprobe 8 was 1.6x faster but lost up to 0.004 image AUROC; nprobe 1 up to 0.02.
IVF_NPROBE = 16
QUERY_BATCH = 65536


class FaissMissingError(DefectlabError, ImportError):
    """faiss is not installed (or broken): the patch method cannot search its bank."""


def import_faiss():
    """The ``faiss`` module, or `FaissMissingError` naming the package to install."""
    try:
        import faiss
    except ImportError as error:
        raise FaissMissingError(
            f"the patch method needs faiss, which cannot be imported ({error}); "
            "install it with: pip install faiss-cpu"
        ) from None
    return faiss


def ivf_cells(n_bank: int) -> int:
    """IVF cells for a bank of ``n_bank`` patches: ~4 sqrt(n), each trained from >= 39 patches."""
    return max(IVF_MIN_CELLS, min(int(4 * math.sqrt(n_bank)), n_bank // IVF_POINTS_PER_CELL))


def index_kind(kind: str, n_bank: int) -> str:
    """The index `PatchIndex.fit` builds for the setting ``kind`` on ``n_bank`` patches: exact or ivf.

    ``auto`` is IVF above `AUTO_IVF_BANK`; ``ivf`` on a bank under `IVF_MIN_BANK`
    (too few patches to train its cells) is exact.
    """
    if kind == AUTO:
        return IVF if n_bank > AUTO_IVF_BANK else EXACT
    if kind == IVF and n_bank < IVF_MIN_BANK:
        return EXACT
    return kind


def index_bytes(kind: str, n_bank: int, feature_dim: int) -> int:
    """Memory of the search index beside the bank: IVF keeps its own copy, ids and centroids."""
    if index_kind(kind, n_bank) == EXACT:
        return n_bank * feature_dim * FLOAT32_BYTES  # faiss's flat index holds a copy
    return n_bank * (feature_dim * FLOAT32_BYTES + INT64_BYTES) + ivf_cells(n_bank) * feature_dim * FLOAT32_BYTES


def exact_distances(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``||query[i] - candidates[i, j]||`` for query ``(n, d)`` and candidates ``(n, k, d)``.

    Computed from the differences themselves, not the norm expansion, so
    small distances keep full float32 relative precision.
    """
    differences = candidates - query[:, None, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", differences, differences))


class PatchIndex:
    """A faiss index over a memory bank, searched for each query's k nearest bank rows.

    Parameters
    ----------
    kind : {"auto", "exact", "ivf"}, default="auto"
        ``exact``: faiss's flat L2 index. ``ivf``: an inverted-file index
        (`ivf_cells` cells, `IVF_NPROBE` searched); a bank under
        `IVF_MIN_BANK` patches is too small to train one and falls back to
        exact, with a logged note. ``auto``: IVF above `AUTO_IVF_BANK`.
    seed : int, default=0
        Seeds the IVF cells' k-means.

    Attributes
    ----------
    kind_ : str
        The index really built (``exact`` or ``ivf``).
    nlist_, nprobe_ : int
        IVF cells and cells searched (0 for exact).
    bank_ : numpy.ndarray of float32, shape (n_bank, feature_dim)
    """

    def __init__(self, kind: str = AUTO, seed: int = 0):
        self.kind = kind
        self.seed = seed

    def fit(self, bank) -> "PatchIndex":
        """Build the index over ``bank`` ``(n_bank, feature_dim)``; returns self."""
        if self.kind not in SEARCH_INDEX_CHOICES:
            raise ValueError(f"search index must be one of {', '.join(SEARCH_INDEX_CHOICES)}, got {self.kind!r}")
        faiss = import_faiss()
        bank = as_feature_matrix(bank, "bank")
        n_bank, feature_dim = bank.shape
        kind = index_kind(self.kind, n_bank)
        if self.kind == IVF and kind == EXACT:
            logger.info(
                "search_index=ivf: the bank holds %d patches, too few to train an IVF index (at least %d); "
                "searching it exactly", n_bank, IVF_MIN_BANK,
            )
        if kind == IVF:
            nlist = ivf_cells(n_bank)
            quantizer = faiss.IndexFlatL2(feature_dim)
            index = faiss.IndexIVFFlat(quantizer, feature_dim, nlist)
            index.cp.seed = int(self.seed)
            index.train(bank)
            index.add(bank)
            index.nprobe = min(IVF_NPROBE, nlist)
            self.nlist_, self.nprobe_ = nlist, int(index.nprobe)
        else:
            index = faiss.IndexFlatL2(feature_dim)
            index.add(bank)
            self.nlist_, self.nprobe_ = 0, 0
        self.kind_ = kind
        self.index_ = index
        self.bank_ = bank
        return self

    def search(self, query, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest bank rows of each query row, nearest first.

        Returns
        -------
        distances : numpy.ndarray of float32, shape (n_query, k)
            Euclidean, recomputed from the differences; ascending along each row.
        indices : numpy.ndarray of int64, shape (n_query, k)
            Bank rows of those distances. Ties may come back in either order.
        """
        if not hasattr(self, "index_"):
            raise not_fitted_error("this PatchIndex is not fitted yet; call fit with the bank first")
        query = as_feature_matrix(query, "query")
        if query.shape[1] != self.bank_.shape[1]:
            raise ValueError(
                f"query has {query.shape[1]} features per row but the bank has {self.bank_.shape[1]}"
            )
        k = check_positive_int(k, "k")
        if k > len(self.bank_):
            raise ValueError(f"k={k} neighbours asked for but the bank holds only {len(self.bank_)} rows")
        distances = np.empty((len(query), k), dtype=np.float32)
        indices = np.empty((len(query), k), dtype=np.int64)
        for start in range(0, len(query), QUERY_BATCH):
            rows = slice(start, start + QUERY_BATCH)
            distances[rows], indices[rows] = self._search_block(query[rows], k)
        return distances, indices

    def _search_block(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _, candidates = self.index_.search(query, k)
        missing = np.any(candidates < 0, axis=1)
        if missing.any():
            # IVF found fewer than k patches in the cells it searched: search those rows exactly.
            candidates[missing] = self._exact_candidates(query[missing], k)
        exact = exact_distances(query, self.bank_[candidates])
        order = np.argsort(exact, axis=1, kind="stable")
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(candidates, order, axis=1)

    def _exact_candidates(self, query: np.ndarray, k: int) -> np.ndarray:
        faiss = import_faiss()
        flat = faiss.IndexFlatL2(self.bank_.shape[1])
        flat.add(self.bank_)
        return flat.search(query, k)[1]

    def description(self) -> dict:
        """What the bundle records about the index."""
        return {"search_index": self.kind_, "nlist": int(self.nlist_), "nprobe": int(self.nprobe_)}

    def to_bytes(self) -> np.ndarray:
        """The index as faiss serialises it (a uint8 array), so serving searches the very same cells."""
        return import_faiss().serialize_index(self.index_)

    @classmethod
    def from_bytes(cls, serialized: np.ndarray, bank: np.ndarray, description: dict) -> "PatchIndex":
        """The index of `to_bytes`, over its ``bank``."""
        index = cls(kind=description["search_index"])
        index.index_ = import_faiss().deserialize_index(np.ascontiguousarray(serialized, dtype=np.uint8))
        index.bank_ = as_feature_matrix(bank, "bank")
        index.kind_ = description["search_index"]
        index.nlist_, index.nprobe_ = int(description["nlist"]), int(description["nprobe"])
        if index.index_.ntotal != len(index.bank_):
            raise ValueError(
                f"the saved search index holds {index.index_.ntotal} patches but the bank {len(index.bank_)}"
            )
        return index


def nearest_distances(query, bank, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k-nearest neighbours of each query row among the bank rows.

    Parameters
    ----------
    query : array-like of shape (n_query, feature_dim)
    bank : array-like of shape (n_bank, feature_dim)
    k : int, default=1
        Neighbours per query row, at most ``n_bank``.

    Returns
    -------
    distances : numpy.ndarray of float32, shape (n_query, k)
        Ascending along each row.
    indices : numpy.ndarray of int64, shape (n_query, k)

    Raises
    ------
    ValueError
        Inputs not non-empty finite 2-D arrays, different feature dimensions,
        or ``k`` not in ``[1, n_bank]``.
    """
    return PatchIndex(EXACT).fit(bank).search(query, k)
