"""Fit a palette with mini-batch k-means: the only module that imports scikit-learn.

The fit runs on the weighted histogram (each distinct color weighted by its pixel count, the
same k-means objective as fitting every pixel). Large histograms are first reduced to the
weighted mean color of each occupied 2**(3*bits) grid cell, which bounds the fit's cost
whatever the image size; Lloyd iterations on the distinct colors (or much finer cells) then
remove the grid's error. The exact nearest-color mapping afterwards uses every distinct color.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .colorspace import Space
from .options import FitMethod

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.cluster import KMeans

#: Fit on at most this many weighted points per palette color (within the bounds below).
FIT_POINTS_PER_COLOR = 256
FIT_POINTS_MIN = 1 << 12
FIT_POINTS_MAX = 1 << 15
#: Grids tried, finest first, when a histogram has too many distinct colors.
GRID_BITS = (7, 6, 5)
#: Palettes up to this size keep the best of this many mini-batch runs (by k-means inertia).
RESTART_COLORS = 32
RESTARTS = 3
#: k-means++ seedings drawn for each mini-batch run; the one of least error starts it. Up to
#: RESTART_COLORS colors, where a seeding costs little and the start decides more of the
#: error, more of them (with three, one photo of 26 lost 0.08 dB at k=8).
SEEDINGS = 3
SEEDINGS_SMALL = 5
#: Full-batch Lloyd iterations polishing each fit, first on the fit's points then on the finer
#: refinement points, and their tolerance (scikit-learn's default is 1e-4: from centers this
#: close, the last small moves cost 15–50% of the time at k=256 and under 0.02 dB, measured;
#: the exact steps follow).
POLISH_STEPS = 30
POLISH_TOL = 1e-3
#: Epochs (passes over the fit's points) of each mini-batch run up to :data:`FAST_COLORS`
#: colors. The run is a start: the Lloyd polish and the exact passes after it do the rest.
#: At 10 epochs it was the largest part of a k=16 fit; at 3 the mean PSNR of 16 photos x 8
#: seeds moved -0.001 to +0.005 dB at k = 8-64 (measured), and the fit took 20% less time.
MINIBATCH_EPOCHS = 3
#: Lloyd refinement on the exact objective: at most this many steps, on at most this many
#: distinct colors (above it, on the means of the finest grid cells that fit).
REFINE_STEPS = 10
REFINE_POINTS = 1 << 17
#: Stop refining when the colors that move carry at most this share of the pixels.
REFINE_TOLERANCE = 1e-3
#: Above this many palette colors the mini-batch fit starts from a weighted sample and the
#: Lloyd passes over every distinct color are accelerated (see :func:`fast_lloyd`): the old
#: route spent 0.4-0.6 s a small photo at k=256 in scikit-learn's Lloyd passes.
FAST_COLORS = 64
#: Pixel draws (by weight, merged) the mini-batch fit of the accelerated route works on.
FAST_SAMPLE = 1 << 12
#: Accelerated Lloyd: at most this many passes; stop when a pass gains under this share of
#: the objective; the largest over-relaxation factor, and its growth per consistent step.
FAST_PASSES = 40
FAST_TOL = 5e-4
FAST_BETA = 3.0
FAST_BETA_STEP = 1.0
#: Sub-unit resolution of the centers during the accelerated passes (quarter units): every
#: score is an integer below 2**24, so the float32 products are exact on any BLAS.
FAST_SCALE = 4
#: Rows per block of the accelerated assignment (a 512 x k block stays in cache).
FAST_CHUNK = 512
#: The compiled passes split the points over threads (at most the mapping's,
#: :func:`colorquant.dither.map_threads`: one in a batch's or a cluster's processes), one per
#: this many points (a 0.4 MP photo's 100,000 colors take 3 ms a pass at k=256 on one thread;
#: with 1 << 15, photos of 13,000–72,000 colors gained about half as much, measured).
FAST_THREAD_POINTS = 1 << 13
#: From this many centers on, the compiled passes' neighbor lists (k x k distances, 0.5 ms
#: a pass at k=256) are split over the same threads.
FAST_SPLIT_CENTERS = 128
#: Seconds the helper threads of the passes may take to start before the fit goes on alone.
THREAD_START_TIMEOUT = 10.0
#: Coordinates of whole-number points below this: the seeding's float32 products and sums
#: are whole numbers below 2**24, exact (:func:`best_seeding`).
WHOLE_SEEDING_TOP = 1024
#: Centers the compiled assignment tries beside each point's previous one (the nearest of
#: that center): at k=256, 1-3% of points a pass then needed a search over every center.
FAST_NEIGHBORS = 16

#: Points per block of :func:`nearest_compiled` (about 25 MB of working copies a block: a
#: large photo's millions of colors are searched block by block, in bounded memory).
COMPILED_NEAREST_POINTS = 1 << 18

#: The compiled assignment (:mod:`colorquant.fitkernel`) once :func:`load_kernel` loaded it.
_KERNEL: Any = None
#: The BLAS and OpenMP pools of the process (a ``threadpoolctl.ThreadpoolController``), found
#: by the first :func:`one_thread`.
_POOLS: Any = None


def load_kernel() -> None:
    """Use the compiled assignment for the fits of this process and of its forks.

    Its results are the BLAS route's, bit for bit; it halves the cost of each Lloyd pass, but
    loading numba costs about 0.4 s, so only processes that fit many palettes (the warm
    worker, a batch of files) load it, and look the thread pools up once before they fork.
    """
    global _KERNEL
    if _KERNEL is None:
        from . import fitkernel

        fitkernel.warm()
        _KERNEL = fitkernel
        _pools()  # here, before the worker or a batch forks: not again in every child


def nearest_compiled(points: np.ndarray, centers: np.ndarray) -> np.ndarray | None:
    """Index (uint8) of the nearest of at most 256 centers of each point, ties to the lowest
    index, by the compiled assignment on the fit's threads (each point's search starting from
    the previous point's answer: sorted distinct colors are mostly near their neighbors): the
    answers of :func:`colorquant.nearest.nearest`, exact both. The points go in blocks of
    :data:`COMPILED_NEAREST_POINTS` (the search holds a few float64 copies of a block).

    None (search otherwise) unless :func:`load_kernel` ran and the points and centers are
    whole-number RGB metric coordinates (0–255).
    """
    if (_KERNEL is None or points.ndim != 2 or points.shape[1] != 3
            or not 0 < len(centers) <= 256 or not np.all(centers == np.rint(centers))):
        return None
    centers = np.asarray(centers, dtype=np.float64)
    labels = np.empty(len(points), dtype=np.uint8)
    with _pass_threads(min(len(points), COMPILED_NEAREST_POINTS)) as threads:
        for start in range(0, len(points), COMPILED_NEAREST_POINTS):
            block = points[start : start + COMPILED_NEAREST_POINTS]
            if not np.all(block == np.rint(block)):
                return None
            assign = _Assignment(block, np.ones(len(block)))
            assign.threads = threads
            labels[start : start + len(block)] = assign(centers, 1)[0]
    return labels


def fit_points_limit(k: int) -> int:
    """How many weighted points the k-means fit of ``k`` colors works on."""
    return min(FIT_POINTS_MAX, max(FIT_POINTS_MIN, FIT_POINTS_PER_COLOR * k))


def grid_cells(colors: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """Cell of each color on the finest grid of :data:`GRID_BITS` with at most ``limit``
    occupied cells (the coarsest if none), as (cell index of each color, number of cells).

    Only the finest grid is computed from the colors; each coarser one from the occupied
    cells of the previous (far fewer than the colors of a large photo).
    """
    bits = GRID_BITS[0]
    if colors.shape[1] == 3:
        return _grid_cells_dense(colors, limit)
    occupied, inverse = np.unique(_cells(colors, bits), return_inverse=True)
    for coarser in GRID_BITS[1:]:
        if len(occupied) <= limit:
            break
        occupied, step = np.unique(_coarsen(occupied, bits, coarser, colors.shape[1]),
                                   return_inverse=True)
        inverse, bits = step[inverse], coarser
    return inverse.reshape(-1), len(occupied)


def _grid_cells_dense(colors: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """:func:`grid_cells` of RGB colors by occupancy tables (2**21 cells at most) instead of
    sorting; the same cell numbers, as the occupied cells come out in ascending order."""
    bits = GRID_BITS[0]
    occupied = _occupied(_cells(colors, bits), bits)
    for coarser in GRID_BITS[1:]:
        if len(occupied) <= limit:
            break
        occupied, bits = _occupied(_coarsen(occupied, bits, coarser, 3), coarser), coarser
    index = np.zeros(1 << (3 * bits), dtype=np.int64)
    index[occupied] = np.arange(len(occupied))
    return index[_cells(colors, bits)], len(occupied)


def _occupied(cells: np.ndarray, bits: int) -> np.ndarray:
    """The distinct cells of an RGB grid of ``bits`` bits a channel, ascending."""
    present = np.zeros(1 << (3 * bits), dtype=bool)
    present[cells] = True
    return np.flatnonzero(present)


def reduce_points(
    colors: np.ndarray, weights: np.ndarray, coords: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``limit`` weighted points standing for the colors: the colors themselves
    if few enough, else the weighted mean coordinates of each occupied grid cell (with the
    cell's total weight), on the finest grid that fits.

    Parameters
    ----------
    colors : ndarray of uint8, shape (m, C)
    weights : ndarray of float64, shape (m,)
    coords : ndarray of float64, shape (m, C)
        ``colors`` encoded in the fit space.
    limit : int
    """
    if len(colors) <= limit:
        return coords, weights
    return _cell_means(*grid_cells(colors, limit), weights, coords)


def _refine_points(
    colors: np.ndarray, weights: np.ndarray, coords: np.ndarray, space: Space
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points for the refinement: every distinct color, or fine grid cells when too many.

    Returns uint8 colors (nearest-color search), their weights and their fit coordinates.
    """
    if len(colors) <= REFINE_POINTS:
        return colors, weights, coords
    means, total = reduce_points(colors, weights, coords, REFINE_POINTS)
    return space.decode(means), total, means


def _cells(colors: np.ndarray, bits: int) -> np.ndarray:
    """Grid cell of each uint8 color, ``bits`` high bits per channel packed into an int64."""
    cells = np.zeros(len(colors), dtype=np.int64)
    for c in range(colors.shape[1]):
        cells = (cells << bits) | (colors[:, c] >> (8 - bits)).astype(np.int64)
    return cells


def _coarsen(cells: np.ndarray, bits: int, coarser: int, channels: int) -> np.ndarray:
    """The cells of a ``coarser`` grid that contain the given cells of a ``bits`` grid (both
    packed as by :func:`_cells`)."""
    out = np.zeros_like(cells)
    mask = (1 << bits) - 1
    for c in range(channels):
        part = (cells >> (bits * (channels - 1 - c))) & mask
        out = (out << coarser) | (part >> (bits - coarser))
    return out


def _cell_means(inverse: np.ndarray, n_cells: int, weights: np.ndarray, coords: np.ndarray,
                weighted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean coordinates of each cell (``inverse`` gives each point's cell) and the
    cell's total weight; ``weighted`` is ``weights[:, None] * coords`` if already formed."""
    total = np.bincount(inverse, weights=weights, minlength=n_cells)
    # channel by channel unless formed: a large histogram's (m, C) products are not needed
    means = np.stack([np.bincount(inverse, minlength=n_cells, weights=(
        weighted[:, c] if weighted is not None else weights * coords[:, c]))
        for c in range(coords.shape[1])], 1)
    means /= total[:, None]
    return means, total


def lloyd_refine(
    colors: np.ndarray, weights: np.ndarray, coords: np.ndarray, centers: np.ndarray, *,
    space: Space, steps: int
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
    points = space.metric(colors)
    centers = np.array(centers, dtype=np.float64)
    labels = None
    enough = REFINE_TOLERANCE * float(np.sum(weights))
    for _ in range(steps):
        new = space.nearest(points, space.metric(space.decode(centers)))
        if labels is not None and float(np.sum(weights[new != labels])) <= enough:
            break
        labels = new
        with np.errstate(invalid="ignore", divide="ignore"):
            means, total = _cell_means(labels, len(centers), weights, coords)
        used = total > 0  # an emptied center keeps its place
        centers[used] = means[used]
    return centers


def one_thread() -> Any:
    """A context in which every BLAS and OpenMP pool the fit uses runs one thread.

    The fit is small, and its result must not depend on the core count. scikit-learn is
    imported first: threadpoolctl limits only the libraries already loaded, and
    ``sklearn.cluster`` loads the OpenMP runtime its k-means runs on (imported inside the limit,
    the k-means ran two OpenMP threads, which on a busy machine made the fit 2.5x slower).
    The libraries are looked up once a process (:data:`_POOLS`): the lookup walks every loaded
    shared object, which cost more than some whole fits' mini-batch runs.
    """
    return _pools().limit(limits=1)


def _pools() -> Any:
    """The process's thread pools (:data:`_POOLS`), looked up on first use."""
    global _POOLS
    if _POOLS is None:
        import sklearn.cluster  # noqa: F401  (loads libgomp before the pools are looked up)
        from threadpoolctl import ThreadpoolController

        _POOLS = ThreadpoolController()
    return _POOLS


def fit_centers(
    colors: np.ndarray, weights: np.ndarray, k: int, *, seed: int, space: Space,
    method: FitMethod = FitMethod.MINIBATCH,
) -> np.ndarray:
    """Fit k cluster centers to weighted colors; returns them as uint8 colors.

    1. The fit runs on about :func:`fit_points_limit` weighted points (grid-cell means when
       there are more distinct colors), so its cost does not grow with the image:

       - ``MINIBATCH`` (default): scikit-learn ``MiniBatchKMeans`` (mini-batch updates)
         from the best of several k-means++ seedings over all points
         (:func:`best_seeding`); up to :data:`RESTART_COLORS` colors, the best of
         :data:`RESTARTS` such runs, each polished by full-batch Lloyd (``KMeans`` started
         from its centers) to rank them. Without restarts one unlucky run in three lost
         0.1–0.3 dB (measured).
       - ``LLOYD``: scikit-learn ``KMeans`` (k-means++, Lloyd; three starts up to 64 colors).

    2. Lloyd iterations on the finer refinement points (every distinct color up to
       :data:`REFINE_POINTS`), which the coarse grid alone misses at large k: in an
       integer-metric space (RGB) with ``MINIBATCH``, the over-relaxed exact passes of
       :func:`fast_lloyd` (compiled once :func:`load_kernel` ran, with the same result);
       otherwise full-batch Lloyd then up to :data:`REFINE_STEPS` exact weighted Lloyd steps
       that assign each color to its nearest *rounded* center.
       Above :data:`FAST_COLORS` colors (RGB, ``MINIBATCH``) step 1 is a single mini-batch
       run on pixel draws (:func:`_fast_start`) instead.

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
    space : Space
        The color space strategy (encode/decode).
    method : FitMethod
        The k-means algorithm.

    Returns
    -------
    ndarray of uint8, shape (k', C), k' <= k
        Distinct rounded centers (centers that round to the same color are merged).
    """
    w = np.asarray(weights, dtype=np.float64)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method is FitMethod.MINIBATCH and space.integer_metric:
            return _fit_exact(colors, w, k, seed, space)
        coords = space.encode(colors)
        points, point_w = reduce_points(colors, w, coords, fit_points_limit(k))
        k = min(k, len(points))
        centers = _fit_points(points, point_w, k, seed, method)
        fine = _refine_points(colors, w, coords, space)
        if len(fine[0]) > len(points):
            centers = _lloyd(fine[2], fine[1], centers).cluster_centers_
        centers = lloyd_refine(*fine, centers, space=space, steps=REFINE_STEPS)
    return np.unique(space.decode(centers), axis=0)


def _fit_exact(colors: np.ndarray, w: np.ndarray, k: int, seed: int, space: Space
               ) -> np.ndarray:
    """The ``MINIBATCH`` fit in an integer-metric space: mini-batch k-means for a start, then
    the exact passes of :func:`fast_lloyd` on the refinement points.

    The grid means are taken in color units channel by channel, so a large histogram is
    never held as (m, C) floats.
    """
    fine_colors, fine_w = colors, w
    if len(colors) > REFINE_POINTS:
        means, fine_w = reduce_points(colors, w, colors, REFINE_POINTS)
        fine_colors = space.decode(space.encode(means))
    metric = space.metric(fine_colors)
    if k > FAST_COLORS:
        # (no grid reduction: this route starts from pixel draws of the refinement points)
        start = _fast_start(metric, fine_w, min(k, len(metric)), seed)
    else:
        means, point_w = reduce_points(colors, w, colors, fit_points_limit(k))
        points = space.encode(means)
        k = min(k, len(points))
        # the seedings measure in whole quarter units: exact, and compiled with the kernel
        start = space.metric(space.decode(_fit_points(
            points, point_w, k, seed, FitMethod.MINIBATCH,
            by=np.rint(np.asarray(means, dtype=np.float64) * FAST_SCALE))))
    # fast_lloyd ends on the exact objective, in fewer passes than plain Lloyd steps reach a
    # higher error; exact Lloyd steps after it gained nothing on the images measured.
    return np.unique(fast_lloyd(metric, fine_w, np.asarray(start, dtype=np.float64)), axis=0)


def _fit_points(points: np.ndarray, weights: np.ndarray, k: int, seed: int,
                method: FitMethod, by: np.ndarray | None = None) -> np.ndarray:
    """k centers fitted to weighted points with the chosen scikit-learn algorithm; ``by``:
    the coordinates the ``MINIBATCH`` seedings measure distances in (see
    :func:`best_seeding`)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if method is FitMethod.LLOYD:
        # Three k-means++ starts matter for small palettes; beyond 64 colors one start is
        # as good after refinement and 3x cheaper.
        return KMeans(n_clusters=k, random_state=seed, n_init=3 if k <= 64 else 1,
                      max_iter=100, algorithm="lloyd").fit(points, sample_weight=weights
                                                           ).cluster_centers_
    random = np.random.RandomState(seed)  # one stream: each restart draws new seeds from it
    restarts = RESTARTS if k <= RESTART_COLORS else 1
    runs = []
    for _ in range(restarts):
        # reassignment_ratio=0: a cluster of rare but distinct colors (a small red door in a
        # photo) is light in a weighted histogram, and reassigning it cost up to 0.25 dB.
        mini = MiniBatchKMeans(
            n_clusters=k, n_init=1, init=best_seeding(
                points, weights, k, random, SEEDINGS_SMALL if k <= RESTART_COLORS else SEEDINGS,
                by=by),
            random_state=random, batch_size=min(4096, len(points)), max_iter=MINIBATCH_EPOCHS,
            reassignment_ratio=0.0, compute_labels=False,  # only the centers are used
        ).fit(points, sample_weight=weights)
        if restarts == 1:  # nothing to rank: the exact passes that follow do the polishing
            return mini.cluster_centers_
        polished = _lloyd(points, weights, mini.cluster_centers_)
        runs.append((polished.inertia_, polished.cluster_centers_))
    return min(runs, key=lambda run: run[0])[1]  # the first of equals: deterministic


def best_seeding(points: np.ndarray, weights: np.ndarray, k: int,
                 random: np.random.RandomState, count: int = 1, *,
                 by: np.ndarray | None = None) -> np.ndarray:
    """Weighted greedy k-means++, ``count`` times side by side: the ``k`` centers (points) of
    the seeding with the least weighted error (the first of equals).

    The seeding of scikit-learn's k-means, and its ``n_init`` choice: each new center is the
    best, by the weighted error it leaves, of ``2 + ln k`` points drawn with probability
    weight x squared distance. Here the ``count`` seedings advance together, one BLAS product
    a center for all of them (which :func:`one_thread` keeps on one thread: the same bits on
    any core count): scikit-learn's own spends most of a small fit in per-call checks. On
    whole-number coordinates and weights (the pixel draws of :func:`_fast_start`, the grid
    means in quarter units that :func:`_fit_exact` gives as ``by``) every distance and sum is
    exact, and once :func:`load_kernel` ran a compiled loop
    (``fitkernel.seedings``) makes the same draws and choices without a numpy call a center.

    Parameters
    ----------
    points : ndarray of float64, shape (n, C)
    weights : ndarray of float64, shape (n,)
    k : int, 1 <= k <= n
    random : RandomState
        Every draw comes from it.
    count : int
    by : ndarray, shape (n, C'), optional
        Coordinates of the same points to measure distances in (the points' own by default);
        the chosen ``points`` are returned.
    """
    chosen_of = np.asarray(points, dtype=np.float64)
    points = np.asarray(points if by is None else by, dtype=np.float64)
    n = len(points)
    trials = 2 + int(np.log(k))
    # whole numbers: every sum below is exact, and the compiled seedings make the same choices
    whole = (points.shape[1] == 3 and np.abs(points).max(initial=0.0) < WHOLE_SEEDING_TOP
             and bool(np.all(points == np.rint(points)) and np.all(weights == np.rint(weights))))
    if whole and _KERNEL is not None:
        cumulative = np.cumsum(weights)
        first = np.minimum(np.searchsorted(cumulative, random.uniform(size=count)
                                           * cumulative[-1], side="right"), n - 1)
        chosen, errors = _KERNEL.seedings(points, np.asarray(weights, dtype=np.float64), first,
                                          random.uniform(size=(k - 1, count, trials)))
        return chosen_of[chosen[int(np.argmin(errors))]]
    squares = (points * points).sum(axis=1)
    # rows [x, |x|^2, 1] against [-2c, 1, |c|^2]: one product gives every squared distance
    rows = np.ascontiguousarray(np.vstack([points.T, squares, np.ones(n)]), dtype=np.float32)
    candidates = np.hstack([-2.0 * points, np.ones((n, 1)), squares[:, None]]).astype(np.float32)
    weights32 = weights.astype(np.float32)
    seeds = np.arange(count)
    chosen = np.empty((count, k), dtype=np.intp)
    cumulative = np.cumsum(weights)
    chosen[:, 0] = np.minimum(np.searchsorted(cumulative, random.uniform(size=count)
                                              * cumulative[-1], side="right"), n - 1)
    closest = np.maximum(candidates[chosen[:, 0]] @ rows, 0.0)  # (count, n), float32
    for c in range(1, k):
        # one running sum over all seedings: seeding s draws within its own stretch of it
        cumulative = np.cumsum((closest * weights).ravel())
        ends = cumulative[n - 1 :: n]
        starts = np.concatenate([[0.0], ends[:-1]])
        targets = starts[:, None] + random.uniform(size=(count, trials)) * (ends - starts)[:, None]
        draws = np.searchsorted(cumulative, targets.ravel(), side="right").reshape(count, trials)
        draws = np.clip(draws - n * seeds[:, None], 0, n - 1)
        near = (candidates[draws.ravel()] @ rows).reshape(count, trials, n)
        np.minimum(near, closest[:, None, :], out=near)
        best = np.argmin(near @ (weights if whole else weights32), axis=1)
        chosen[:, c] = draws[seeds, best]
        closest = np.maximum(near[seeds, best], 0.0)  # the product can round just below zero
    return chosen_of[chosen[int(np.argmin(closest @ weights))]]


def _lloyd(points: np.ndarray, weights: np.ndarray, centers: np.ndarray) -> KMeans:
    """Full-batch Lloyd iterations (scikit-learn ``KMeans``) from the given centers; the
    fitted model (centers and inertia)."""
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=len(centers), init=centers, n_init=1, max_iter=POLISH_STEPS,
                   tol=POLISH_TOL, algorithm="lloyd")
    return model.fit(points, sample_weight=weights)


def _fast_start(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Mini-batch k-means (scikit-learn, k-means++ start) on :data:`FAST_SAMPLE` pixel draws.

    Draws by weight, merged into distinct points with their counts, stand for the pixels at
    full color resolution (grid cells that coarse hid the structure of compact color clouds:
    -0.14 dB on a Kodak photo at k=256); returns k centers in the coordinates of ``points``.
    """
    from sklearn.cluster import MiniBatchKMeans

    random = np.random.RandomState(seed)
    points = np.asarray(points, dtype=np.float64)
    sample, sample_w = points, weights
    if len(points) > FAST_SAMPLE:
        cumulative = np.cumsum(weights)
        draws = np.searchsorted(cumulative, random.uniform(0, cumulative[-1], FAST_SAMPLE),
                                side="right")
        chosen, counts = np.unique(np.minimum(draws, len(points) - 1), return_counts=True)
        if len(chosen) > 4 * k:
            sample, sample_w = points[chosen], counts.astype(np.float64)
        else:  # a few colors carry nearly all pixels: distinct colors, uniformly instead
            chosen = np.sort(random.choice(len(points), FAST_SAMPLE, replace=False))
            sample, sample_w = points[chosen], weights[chosen]
    mini = MiniBatchKMeans(n_clusters=k, init=best_seeding(sample, sample_w, k, random),
                           random_state=random, n_init=1, batch_size=min(4096, len(sample)),
                           max_iter=3, reassignment_ratio=0.0,
                           compute_labels=False).fit(sample, sample_weight=sample_w)
    return mini.cluster_centers_


def fast_lloyd(points: np.ndarray, weights: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Over-relaxed weighted Lloyd passes over every point, on the exact objective.

    Each pass assigns every point to its nearest center kept at 1/:data:`FAST_SCALE` units
    (exact integer scores in float32 blocks, one BLAS product each, or the compiled search of
    :class:`_Assignment`: the same labels) and measures the exact weighted error. A center
    whose step keeps its direction moves up to :data:`FAST_BETA`
    times its Lloyd step (plain Lloyd crawls at k=256: 30 passes left 0.04-0.1 dB); a pass
    that raises the error is undone by taking the plain step instead. Stops when a pass gains
    under :data:`FAST_TOL` of the error. Then two passes at whole units pick the best rounded
    centers.

    Parameters
    ----------
    points : ndarray of float32, shape (m, C)
        Whole-number metric coordinates (:meth:`RGBSpace.metric`) of the distinct colors.
    weights : ndarray of float64, shape (m,)
    centers : ndarray of float64, shape (k, C)
        Starting centers, in the same coordinates.

    Returns
    -------
    ndarray of uint8, shape (k, C)
        The rounded centers with the least weighted error seen.
    """
    coords = np.asarray(points, dtype=np.float64)
    assign = _Assignment(coords, weights)
    with _pass_threads(len(coords) if assign.compiled else 0) as assign.threads:
        return _fast_passes(assign, coords, centers)


def _fast_passes(assign: _Assignment, coords: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The passes of :func:`fast_lloyd`."""
    centers = np.array(centers, dtype=np.float64)
    top = float(coords.max(initial=0.0))
    previous = None  # (error, centers, plain step) of the last accepted pass
    beta = np.ones(len(centers))
    last_step = np.zeros_like(centers)
    for _ in range(FAST_PASSES):
        _, error = assign(centers, FAST_SCALE)
        if previous is not None and error > previous[0]:
            centers, previous = previous[1] + previous[2], None
            beta[:] = 1.0
            last_step[:] = 0.0
            continue
        if previous is not None and previous[0] - error <= FAST_TOL * error:
            break
        means, total = assign.means(len(centers))
        step = np.zeros_like(centers)
        used = total > 0  # an emptied center keeps its place
        step[used] = means[used] - centers[used]
        steady = (step * last_step).sum(axis=1) > 0
        beta = np.where(steady, np.minimum(FAST_BETA, beta + FAST_BETA_STEP), 1.0)
        previous, last_step = (error, centers, step), step
        centers = np.clip(centers + beta[:, None] * step, 0.0, top)
    best, best_error = None, np.inf
    for _ in range(2):
        rounded = np.clip(np.rint(centers), 0.0, top)
        _, error = assign(rounded, 1)
        if error < best_error:
            best, best_error = rounded, error
        means, total = assign.means(len(centers))
        used = total > 0
        centers = rounded.copy()
        centers[used] = means[used]
    return best.astype(np.uint8)


@dataclass(frozen=True)
class _Threads:
    """Helper threads of the compiled passes: ``count`` threads in all, this one included."""

    count: int
    pool: ThreadPoolExecutor


@contextlib.contextmanager
def _pass_threads(points: int) -> Iterator[_Threads | None]:
    """Helper threads for the compiled passes over ``points`` points, every one started before
    the first pass, and joined at the end; None when one thread is enough or no helper could
    start (a process limit of the caller's): the passes' result is the same on any count."""
    from . import dither

    count = min(dither.map_threads(), points // FAST_THREAD_POINTS)
    if count <= 1:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=count - 1, thread_name_prefix="colorquant-fit")
    ready = threading.Barrier(count)
    try:
        try:
            for _ in range(count - 1):  # each waits until all are up: none is reused early
                pool.submit(ready.wait)
            ready.wait(timeout=THREAD_START_TIMEOUT)
            started = True
        except (RuntimeError, threading.BrokenBarrierError):  # "can't start new thread"
            ready.abort()
            started = False
        yield _Threads(count, pool) if started else None
    finally:
        pool.shutdown(wait=True)


class _Assignment:
    """The exact assignment of :func:`fast_lloyd`, pass after pass: each point's nearest
    center (ties to the lowest index), the weighted error, for centers rounded to 1/``scale``
    units, and the weighted means of each center's points.

    Without the compiled kernel every pass is :func:`_assign_exact` (means by
    :func:`_cell_means`); with :func:`load_kernel` done, passes search from each point's
    previous center (in the first pass, from the nearest center of the color before it),
    skipping the points whose bound shows it is still the nearest (``fitkernel.assign``),
    over ranges of the points side by side when
    :attr:`threads` holds helpers (:func:`_pass_threads`). Both give the same labels, the
    same error and the same means bit for bit when the weights are whole numbers (pixel
    counts): the error and the sums are then sums of whole numbers below 2**53, exact in any
    order; other weights keep the BLAS route.
    """

    def __init__(self, points: np.ndarray, weights: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        self.threads: _Threads | None = None  # helpers of the compiled passes, if any
        self.weights = weights
        self.weighted = weights[:, None] * self.points  # the means' sums, formed once
        self.labels: np.ndarray | None = None
        self.compiled = (_KERNEL is not None and self.points.shape[1] == 3  # the kernel's RGB
                         and bool(np.all(weights == np.rint(weights))))
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._grids: dict[int, np.ndarray] = {}
        self._sums: tuple[np.ndarray, np.ndarray] | None = None
        self._bounds: tuple[int, np.ndarray, np.ndarray] | None = None  # scale, lower, quant

    def __call__(self, centers: np.ndarray, scale: int) -> tuple[np.ndarray, float]:
        if self.compiled:
            if scale not in self._grids:
                self._grids[scale] = np.rint(self.points) * scale
            quant = np.rint(centers * scale)
            first = self.labels is None  # no previous center: each point starts from the last's
            if first:
                self.labels = np.zeros(len(self.points), dtype=np.int64)
            if self._bounds is None or self._bounds[0] != scale:  # no bound known yet
                lower, shift = np.full(len(self.points), -np.inf), np.zeros(len(quant))
            else:
                lower, shift = self._bounds[1], np.sqrt(((quant - self._bounds[2]) ** 2).sum(1))
            found = self._neighbors(quant)
            parts = self._ranges((self._grids[scale], self.weights, self.weighted, quant,
                                  self.labels, *found, lower, shift), first)
            self._bounds = (scale, lower, quant)
            # whole numbers below 2**53: the ranges' sums add up exactly, in any order
            self._sums = (sum(p[2] for p in parts), sum(p[3] for p in parts))
            return self.labels, float(sum(p[0] for p in parts))
        if scale not in self._rows:
            self._rows[scale] = _exact_rows(self.points, scale)
        labels, error = _assign_exact(self._rows[scale], self.weights, centers, scale)
        self.labels = labels.astype(np.int64)  # also the kernel's start for the next pass
        self._sums = None
        return labels, error

    def _neighbors(self, quant: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``fitkernel.center_neighbors`` of every center: from :data:`FAST_SPLIT_CENTERS`
        centers on, in one range of centers per thread of :attr:`threads`."""
        if self.threads is None or len(quant) < FAST_SPLIT_CENTERS:
            return _KERNEL.center_neighbors(quant, FAST_NEIGHBORS)
        parts = self._side_by_side(_KERNEL.center_neighbors, len(quant), (quant, FAST_NEIGHBORS))
        return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))

    def _ranges(self, args: tuple[Any, ...], chain: bool) -> list[tuple[Any, ...]]:
        """``fitkernel.assign`` over every point, in one range per thread."""
        return self._side_by_side(_KERNEL.assign, len(self.points), args, (chain,))

    def _side_by_side(self, function: Any, size: int, args: tuple[Any, ...],
                      tail: tuple[Any, ...] = ()) -> list[Any]:
        """``function(*args, start, stop, *tail)`` over ``size`` items split in one range per
        thread of :attr:`threads` (the last range on this thread); the results in range
        order."""
        from itertools import pairwise

        count = self.threads.count if self.threads else 1
        ranges = list(pairwise(size * i // count for i in range(count + 1)))
        futures = [self.threads.pool.submit(function, *args, *r, *tail) for r in ranges[:-1]]
        last = function(*args, *ranges[-1], *tail)
        return [f.result() for f in futures] + [last]

    def means(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The weighted mean of the points of each of the ``k`` centers, by the last pass's
        labels, and their total weight (a center without points: nan, 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self._sums is None:
                return _cell_means(self.labels, k, self.weights, self.points, self.weighted)
            sums, total = self._sums
            return sums / total[:, None], total


def _exact_rows(points: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[X, 1]`` (float32, X = scale * point rounded) for :func:`_assign_exact`, and
    ``|X|^2`` (float64)."""
    grid = np.rint(np.asarray(points, dtype=np.float64) * scale)
    rows = np.hstack([grid, np.ones((len(grid), 1))]).astype(np.float32)
    return rows, (grid * grid).sum(axis=1)


def _assign_exact(rows: tuple[np.ndarray, np.ndarray], weights: np.ndarray,
                  centers: np.ndarray, scale: int) -> tuple[np.ndarray, float]:
    """Nearest center of each whole-number point (0-255; ``rows`` from :func:`_exact_rows`),
    centers rounded to 1/``scale`` units: the labels (ties to the lowest index) and the
    weighted squared error (times ``scale**2``). Scores are ``|C|^2 - 2 X.C`` with
    C = scale * center: for scale <= 4 every product and partial sum is an integer below
    2**24, exact in float32 whatever the BLAS kernel.
    """
    rows, squares = rows
    quant = np.rint(centers * scale)
    augmented = np.vstack([-2.0 * quant.T, (quant * quant).sum(axis=1)[None]]).astype(np.float32)
    labels = np.empty(len(rows), dtype=np.intp)
    scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), FAST_CHUNK):
        block = rows[start : start + FAST_CHUNK] @ augmented
        best = block.argmin(axis=1)
        labels[start : start + FAST_CHUNK] = best
        scores[start : start + FAST_CHUNK] = block[np.arange(len(best)), best]
    return labels, float(np.dot(scores.astype(np.float64) + squares, weights))
