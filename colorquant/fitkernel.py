"""The exact assignment loop of the k>64 fit, compiled with numba.

Loaded only where its start-up cost is paid once for many fits (the warm worker, a batch of
several files: :func:`colorquant.fit.load_kernel`); elsewhere the fit uses its BLAS blocks.
Both give the same labels and the same error, bit for bit: every squared distance here is a
sum of squares of whole numbers, exact in float64, as the BLAS scores are exact in float32.
"""

from __future__ import annotations

import numpy as np

from .jit import cached

#: Safety margin (scaled units) of the triangle-inequality test; distances are at most about
#: 1800 and exact up to one rounding of a square root, so this only ever adds full searches.
MARGIN = 1e-6


@cached
def center_neighbors(quant, count):
    """The ``count`` nearest other centers of each center, nearest first (any order among
    equals), their distances, and the distance from each center to the nearest center not
    among them (inf if none is left).

    ``quant`` (k, C) float64 holds whole numbers, so the squared distances are exact.
    """
    k, channels = quant.shape
    count = min(count, k - 1)
    neighbors = np.empty((k, max(count, 1)), dtype=np.int64)
    gaps = np.empty((k, max(count, 1)))
    radius = np.full(k, np.inf)
    near = np.empty(count + 1)
    which = np.empty(count + 1, dtype=np.int64)
    for a in range(k):
        filled = 0
        for j in range(k):
            if j == a:
                continue
            d = 0.0
            for c in range(channels):
                diff = quant[a, c] - quant[j, c]
                d += diff * diff
            if filled <= count:  # keep the count + 1 nearest, sorted ascending
                pos = filled
                filled += 1
            elif d < near[count]:
                pos = count
            else:
                continue
            while pos > 0 and near[pos - 1] > d:
                near[pos] = near[pos - 1]
                which[pos] = which[pos - 1]
                pos -= 1
            near[pos] = d
            which[pos] = j
        for t in range(count):
            neighbors[a, t] = which[t]
            gaps[a, t] = np.sqrt(near[t])
        if filled > count:
            radius[a] = np.sqrt(near[count])
    return neighbors[:, :count], gaps[:, :count], radius


@cached
def assign(grid, weights, quant, labels, neighbors, gaps, radius):
    """Nearest center of every point, starting from its previous center; the weighted error.

    ``grid`` (m, C) and ``quant`` (k, C) are whole numbers in float64; ``labels`` (m,) holds
    each point's previous center and is overwritten with its nearest (ties to the lowest
    index); ``neighbors``, ``gaps`` and ``radius`` come from :func:`center_neighbors`. By the
    triangle inequality a center ``j`` is farther from the point ``x`` than its previous
    center ``a`` when ``d(a, j) > 2 d(x, a)``, so the neighbors, nearest first, are compared
    only up to that distance; and the nearest found is the nearest of all when ``d(x, best) +
    d(x, a) < radius[a]``, as any other center ``j`` has ``d(x, j) >= d(a, j) - d(x, a) >=
    radius[a] - d(x, a) > d(x, best)``. Otherwise every center is compared. Returns (sum of
    weight * squared distance in point order, full searches).
    """
    m, channels = grid.shape
    k = quant.shape[0]
    count = neighbors.shape[1]
    error = 0.0
    full = 0
    for i in range(m):
        a = labels[i]
        d_a = 0.0
        for c in range(channels):
            diff = grid[i, c] - quant[a, c]
            d_a += diff * diff
        best, best_d = a, d_a
        reach = 2.0 * np.sqrt(d_a) + MARGIN
        for t in range(count):
            if gaps[a, t] > reach:
                break
            j = neighbors[a, t]
            d = 0.0
            for c in range(channels):
                diff = grid[i, c] - quant[j, c]
                d += diff * diff
            if d < best_d or (d == best_d and j < best):
                best, best_d = j, d
        if np.sqrt(best_d) + np.sqrt(d_a) + MARGIN >= radius[a]:
            full += 1
            best, best_d = 0, np.inf
            for j in range(k):
                d = 0.0
                for c in range(channels):
                    diff = grid[i, c] - quant[j, c]
                    d += diff * diff
                if d < best_d:
                    best, best_d = j, d
        labels[i] = best
        error += best_d * weights[i]
    return error, full


def warm() -> None:
    """Load the compiled loops now (from numba's cache: a few tenths of a second once)."""
    quant = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    neighbors, gaps, radius = center_neighbors(quant, 1)
    assign(np.zeros((1, 3)), np.ones(1), quant, np.zeros(1, dtype=np.int64), neighbors, gaps,
           radius)
