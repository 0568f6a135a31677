"""Fit a palette with mini-batch k-means: the only module that imports scikit-learn.

The fit runs on the weighted histogram (each distinct color weighted by its pixel count, the
same k-means objective as fitting every pixel). Large histograms are first reduced to the
weighted mean color of each occupied 2**(3*bits) grid cell, which bounds the fit's cost
whatever the image size; the exact nearest-color mapping afterwards uses every distinct color.
"""

from __future__ import annotations

import warnings

import numpy as np

from .colorspace import RGBSpace

#: Histograms up to this many distinct colors are fitted as they are.
FIT_POINTS = 1 << 15
#: Reduce to a grid of this many bits per channel; finer if too few cells are occupied.
GRID_BITS = (5, 6, 7)


def reduce_points(
    colors: np.ndarray, weights: np.ndarray, coords: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean coordinates of each occupied grid cell, with the cell's total weight.

    Parameters
    ----------
    colors : ndarray of uint8, shape (m, C)
    weights : ndarray, shape (m,)
    coords : ndarray of float64, shape (m, C)
        ``colors`` encoded in the fit space.
    k : int
        Palette size; the grid is refined until it has at least 4k occupied cells.
    """
    for bits in GRID_BITS:
        cells = np.zeros(len(colors), dtype=np.int64)
        for c in range(colors.shape[1]):
            cells = (cells << bits) | (colors[:, c] >> (8 - bits)).astype(np.int64)
        occupied, inverse = np.unique(cells, return_inverse=True)
        if len(occupied) >= 4 * k:
            break
    w = np.asarray(weights, dtype=np.float64)
    total = np.bincount(inverse, weights=w, minlength=len(occupied))
    means = np.empty((len(occupied), coords.shape[1]), dtype=np.float64)
    for c in range(coords.shape[1]):
        means[:, c] = np.bincount(inverse, weights=w * coords[:, c], minlength=len(occupied))
    means /= total[:, None]
    return means, total


def fit_centers(
    colors: np.ndarray, weights: np.ndarray, k: int, *, seed: int, space: RGBSpace
) -> np.ndarray:
    """Fit k cluster centers to weighted colors; returns them as uint8 colors.

    Parameters
    ----------
    colors : ndarray of uint8, shape (m, C), m > k
        Distinct colors.
    weights : ndarray, shape (m,)
        Pixel count of each color.
    k : int
        Number of clusters.
    seed : int
        Seeds k-means++ and the mini-batches.
    space : RGBSpace
        The color space strategy (encode/decode).

    Returns
    -------
    ndarray of uint8, shape (k', C), k' <= k
        Distinct rounded centers (centers that round to the same color are merged).
    """
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    coords = space.encode(colors)
    w = np.asarray(weights, dtype=np.float64)
    if len(coords) > FIT_POINTS:
        coords, w = reduce_points(colors, w, coords, k)
    k = min(k, len(coords))
    model = MiniBatchKMeans(
        n_clusters=k,
        random_state=seed,
        n_init=3,
        batch_size=min(4096, len(coords)),
        max_iter=100,
        compute_labels=False,
    )
    # One thread: the fit is small, and its result must not depend on the core count.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(coords, sample_weight=w)
    return np.unique(space.decode(model.cluster_centers_), axis=0)
