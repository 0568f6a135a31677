"""Fit a palette with mini-batch k-means: the only module that imports scikit-learn.

The fit runs on the weighted histogram (each distinct color weighted by its pixel count, the
same k-means objective as fitting every pixel). Large histograms are first reduced to the
weighted mean color of each occupied 2**(3*bits) grid cell, which bounds the fit's cost
whatever the image size; a few exact weighted Lloyd steps on the distinct colors then remove
the grid's error. The exact nearest-color mapping afterwards uses every distinct color.
"""

from __future__ import annotations

import warnings

import numpy as np

from .colorspace import RGBSpace
from .options import FitMethod

#: Histograms up to this many distinct colors are fitted as they are.
FIT_POINTS = 1 << 15
#: Reduce to a grid of this many bits per channel; finer if too few cells are occupied.
GRID_BITS = (5, 6, 7)
#: Lloyd refinement on the exact objective: at most this many steps, on at most this many
#: distinct colors (above it, on the means of 7- or 6-bit grid cells).
REFINE_STEPS = 10
REFINE_POINTS = 1 << 17
#: Stop refining when the colors that move carry at most this share of the pixels.
REFINE_TOLERANCE = 1e-3


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
        occupied, inverse = np.unique(_cells(colors, bits), return_inverse=True)
        if len(occupied) >= 4 * k:
            break
    return _cell_means(inverse, len(occupied), np.asarray(weights, dtype=np.float64), coords)


def _refine_points(
    colors: np.ndarray, weights: np.ndarray, coords: np.ndarray, space: RGBSpace
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points for the refinement: every distinct color, or fine grid cells when too many.

    Returns uint8 colors (nearest-color search), their weights and their fit coordinates.
    """
    if len(colors) <= REFINE_POINTS:
        return colors, weights, coords
    for bits in (7, 6):
        occupied, inverse = np.unique(_cells(colors, bits), return_inverse=True)
        if len(occupied) <= REFINE_POINTS:
            break
    means, total = _cell_means(inverse, len(occupied), weights, coords)
    return space.decode(means), total, means


def _cells(colors: np.ndarray, bits: int) -> np.ndarray:
    """Grid cell of each uint8 color, ``bits`` high bits per channel packed into an int64."""
    cells = np.zeros(len(colors), dtype=np.int64)
    for c in range(colors.shape[1]):
        cells = (cells << bits) | (colors[:, c] >> (8 - bits)).astype(np.int64)
    return cells


def _cell_means(inverse: np.ndarray, n_cells: int, weights: np.ndarray, coords: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean coordinates of each cell (``inverse`` gives each point's cell) and the
    cell's total weight."""
    total = np.bincount(inverse, weights=weights, minlength=n_cells)
    means = np.stack([np.bincount(inverse, weights=weights * coords[:, c], minlength=n_cells)
                      for c in range(coords.shape[1])], 1)
    means /= total[:, None]
    return means, total


def lloyd_refine(
    colors: np.ndarray, weights: np.ndarray, coords: np.ndarray, centers: np.ndarray, *,
    space: RGBSpace, steps: int
) -> np.ndarray:
    """Weighted Lloyd steps on the exact objective: each color to its nearest rounded center.

    Parameters
    ----------
    colors : ndarray of uint8, shape (m, C)
    weights : ndarray of float64, shape (m,)
    coords : ndarray of float64, shape (m, C)
        ``colors`` in the fit space (the means are taken there).
    centers : ndarray of float64, shape (k, C)
        Starting centers in the fit space.
    steps : int
        At most this many steps; stops early once the colors that change center carry at
        most :data:`REFINE_TOLERANCE` of the total weight (the remaining gain is negligible).

    Returns
    -------
    ndarray of float64, shape (k, C)
    """
    from .remap import nearest

    points = space.metric(colors)
    centers = np.array(centers, dtype=np.float64)
    labels = None
    enough = REFINE_TOLERANCE * float(np.sum(weights))
    for _ in range(steps):
        new = nearest(points, space.metric(space.decode(centers)))
        if labels is not None and float(np.sum(weights[new != labels])) <= enough:
            break
        labels = new
        total = np.bincount(labels, weights=weights, minlength=len(centers))
        used = total > 0  # an emptied center keeps its place
        for c in range(coords.shape[1]):
            sums = np.bincount(labels, weights=weights * coords[:, c], minlength=len(centers))
            centers[used, c] = sums[used] / total[used]
    return centers


def fit_centers(
    colors: np.ndarray, weights: np.ndarray, k: int, *, seed: int, space: RGBSpace,
    method: FitMethod = FitMethod.MINIBATCH,
) -> np.ndarray:
    """Fit k cluster centers to weighted colors; returns them as uint8 colors.

    On at most :data:`FIT_POINTS` weighted points (grid-cell means above that):

    - ``MINIBATCH`` (default): scikit-learn ``MiniBatchKMeans`` (k-means++ over all points,
      then mini-batch updates), polished by up to 30 full-batch Lloyd iterations (``KMeans``
      started from its centers);
    - ``LLOYD``: scikit-learn ``KMeans`` (k-means++, Lloyd; three starts up to 64 colors),
      which reaches slightly better minima (about 0.1 dB PSNR at k=16, 0.1–0.2 dB at k=256).

    Both then take up to :data:`REFINE_STEPS` exact weighted Lloyd steps on the distinct colors
    themselves (fine grid cells above :data:`REFINE_POINTS`), which removes the grid's error.

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
    method : FitMethod
        The k-means algorithm.

    Returns
    -------
    ndarray of uint8, shape (k', C), k' <= k
        Distinct rounded centers (centers that round to the same color are merged).
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    coords = space.encode(colors)
    w = np.asarray(weights, dtype=np.float64)
    points, point_w = (reduce_points(colors, w, coords, k) if len(coords) > FIT_POINTS
                       else (coords, w))
    k = min(k, len(points))
    # One thread: the fit is small, and its result must not depend on the core count.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method is FitMethod.MINIBATCH:
            # Three k-means++ initialisations help small palettes; above 64 colors one is as
            # good after the polish (measured) and cheaper.
            mini = MiniBatchKMeans(
                n_clusters=k, random_state=seed, n_init=3 if k <= 64 else 1,
                init_size=len(points), batch_size=min(4096, len(points)), max_iter=10,
            ).fit(points, sample_weight=point_w)
            model = KMeans(n_clusters=k, init=mini.cluster_centers_, n_init=1, max_iter=30,
                           algorithm="lloyd")
        else:
            # Three k-means++ starts matter for small palettes; beyond 64 colors one start is
            # as good after refinement and 3x cheaper.
            model = KMeans(n_clusters=k, random_state=seed, n_init=3 if k <= 64 else 1,
                           max_iter=100, algorithm="lloyd")
        model.fit(points, sample_weight=point_w)
        refine = _refine_points(colors, w, coords, space)
        centers = lloyd_refine(*refine, model.cluster_centers_, space=space,
                               steps=REFINE_STEPS)
    return np.unique(space.decode(centers), axis=0)
