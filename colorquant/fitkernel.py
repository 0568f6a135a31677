"""The exact assignment loop of the fit's Lloyd passes, compiled with numba.

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


@cached(nogil=True)
def center_neighbors(quant, count, start=0, stop=-1):
    """The ``count`` nearest other centers of each center, nearest first (any order among
    equals), their distances, and the distance from each center to the nearest center not
    among them (inf if none is left); of the centers ``start`` to ``stop`` (exclusive; -1:
    the last), so that ranges can run side by side (the loop releases the GIL).

    ``quant`` (k, 3) float64 holds whole numbers, so the squared distances are exact.
    """
    k = quant.shape[0]
    stop = k if stop < 0 else stop
    x, y, z = quant[:, 0].copy(), quant[:, 1].copy(), quant[:, 2].copy()
    count = min(count, k - 1)
    neighbors = np.empty((stop - start, max(count, 1)), dtype=np.int64)
    gaps = np.empty((stop - start, max(count, 1)))
    radius = np.full(stop - start, np.inf)
    near = np.empty(count + 1)
    which = np.empty(count + 1, dtype=np.int64)
    row = np.empty(k)
    for a in range(start, stop):
        xa, ya, za = x[a], y[a], z[a]
        for j in range(k):  # three named channels: the compiler vectorizes this loop
            dx, dy, dz = x[j] - xa, y[j] - ya, z[j] - za
            row[j] = dx * dx + dy * dy + dz * dz
        filled = 0
        for j in range(k):
            if j == a:
                continue
            d = row[j]
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
            neighbors[a - start, t] = which[t]
            gaps[a - start, t] = np.sqrt(near[t])
        if filled > count:
            radius[a - start] = np.sqrt(near[count])
    return neighbors[:, :count], gaps[:, :count], radius


@cached(nogil=True)
def assign(grid, weights, weighted, quant, labels, neighbors, gaps, radius, lower, shift,
           start, stop, chain):
    """Nearest center of the points ``start`` to ``stop`` (exclusive), starting from each
    one's previous center (with ``chain``, from the nearest center of the point before it in
    the range: a first pass, where the points are distinct colors in sorted order and a point's
    neighbor in the list is mostly near it in color); their weighted error and each center's
    sums for the means.

    ``grid`` (m, 3) and ``quant`` (k, 3) are whole numbers in float64 (three channels, named
    in the loops so that the compiler vectorizes them: the RGB fit's); ``labels`` (m,) holds
    each point's previous center and is overwritten with its nearest (ties to the lowest
    index); ``neighbors``, ``gaps`` and ``radius`` come from :func:`center_neighbors`.

    Two tests spare most points most of the search, and both only decide whether to search,
    never the answer:

    - ``lower`` (m,) holds, per point, a lower bound on its distance to every center but its
      own, as left by the previous call, and ``shift`` (k,) how far each center moved since
      (``lower`` -inf where unknown). When the point's own center is still nearer than that
      bound, less the largest move of another center, it is the nearest (Hamerly's bound).
    - Otherwise, by the triangle inequality a center ``j`` is farther from the point ``x``
      than its previous center ``a`` when ``d(a, j) > 2 d(x, a)``, so the neighbors, nearest
      first, are compared only up to that distance; and the nearest found is the nearest of
      all when ``d(x, best) + d(x, a) < radius[a]``, as any other center ``j`` has ``d(x, j)
      >= d(a, j) - d(x, a) >= radius[a] - d(x, a) > d(x, best)``. Otherwise every center is
      compared. The bound of the point is then set again from what was compared.

    ``weighted`` is ``weights[:, None] * grid`` ((m, 3), any coordinates of the points): the sums
    of each center's points are added in point order, as ``numpy.bincount`` adds them.
    Returns (sum of weight * squared distance in point order, full searches, sums (k, 3),
    total weight of each center (k,)), all of the range's points.

    A point's answer depends on nothing but the point (its bound, on where its search began:
    with ``chain``, on where its range begins; the bound is a true one either way), so ranges
    can run side by side (the loop releases the GIL); with whole-number weights and
    coordinates every sum is a whole number below 2**53, exact in float64 in any order, so
    the ranges' results add up to the whole's bit for bit.
    """
    k = quant.shape[0]
    x, y, z = quant[:, 0].copy(), quant[:, 1].copy(), quant[:, 2].copy()
    row = np.empty(k)
    count = neighbors.shape[1]
    top, runner, top_j = 0.0, 0.0, -1  # the largest move, and the largest of the others
    for j in range(k):
        if shift[j] > top:
            top, runner, top_j = shift[j], top, j
        elif shift[j] > runner:
            runner = shift[j]
    sums = np.zeros((k, weighted.shape[1]))
    totals = np.zeros(k)
    error = 0.0
    full = 0
    for i in range(start, stop):
        a = labels[i - 1] if chain and i > start else labels[i]
        gx, gy, gz = grid[i, 0], grid[i, 1], grid[i, 2]
        d_a = (gx - x[a]) ** 2 + (gy - y[a]) ** 2 + (gz - z[a]) ** 2
        root_a = np.sqrt(d_a)
        bound = lower[i] - (runner if a == top_j else top) - MARGIN
        best, best_d = a, d_a
        if root_a + MARGIN < bound:
            lower[i] = bound
        else:
            second = np.inf  # the nearest compared center other than the best
            beyond = radius[a]  # no center left uncompared is nearer to a than this
            reach = 2.0 * root_a + MARGIN
            for t in range(count):
                if gaps[a, t] > reach:
                    beyond = gaps[a, t]
                    break
                j = neighbors[a, t]
                d = (gx - x[j]) ** 2 + (gy - y[j]) ** 2 + (gz - z[j]) ** 2
                if d < best_d or (d == best_d and j < best):
                    second = min(second, np.sqrt(best_d))
                    best, best_d = j, d
                else:
                    second = min(second, np.sqrt(d))
            if np.sqrt(best_d) + root_a + MARGIN >= radius[a]:
                full += 1
                best, best_d, second_d = 0, np.inf, np.inf
                for j in range(k):  # vectorized: the distances first, then the two least
                    row[j] = (gx - x[j]) ** 2 + (gy - y[j]) ** 2 + (gz - z[j]) ** 2
                for j in range(k):
                    d = row[j]
                    if d < best_d:
                        best, best_d, second_d = j, d, best_d
                    elif d < second_d:
                        second_d = d
                lower[i] = np.sqrt(second_d) - MARGIN
            else:
                lower[i] = min(second, beyond - root_a) - MARGIN
        labels[i] = best
        error += best_d * weights[i]
        totals[best] += weights[i]
        sums[best, 0] += weighted[i, 0]
        sums[best, 1] += weighted[i, 1]
        sums[best, 2] += weighted[i, 2]
    return error, full, sums, totals


@cached(reassociate=True)
def _error_with(x, y, z, c, closest, weights):
    """The weighted error of the points (``x``, ``y``, ``z``) to the nearer of their
    ``closest`` squared distance and point ``c``: whole numbers, so added in any order (the
    compiler vectorizes the sum)."""
    score = 0.0
    for i in range(x.shape[0]):
        d = (x[i] - x[c]) ** 2 + (y[i] - y[c]) ** 2 + (z[i] - z[c]) ** 2
        score += min(d, closest[i]) * weights[i]
    return score


@cached
def seedings(points, weights, first, uniforms):
    """Greedy k-means++ seedings side by side, as ``colorquant.fit.best_seeding`` runs them,
    on whole-number points and weights: every squared distance and every weighted sum is then
    a whole number below 2**53, so the draws, the choices and the result are its own, bit for
    bit.

    ``points`` (n, 3) and ``weights`` (n,) float64; ``first`` (count,) the first center of each
    seeding; ``uniforms`` (k - 1, count, trials) the draws in [0, 1) of the later centers, in
    the order the numpy version draws them. Returns the chosen points (count, k) and each
    seeding's weighted error (count,).
    """
    n = points.shape[0]
    steps, count, trials = uniforms.shape
    x, y, z = points[:, 0].copy(), points[:, 1].copy(), points[:, 2].copy()
    chosen = np.empty((count, steps + 1), dtype=np.int64)
    closest = np.empty((count, n))
    for s in range(count):
        c = first[s]
        chosen[s, 0] = c
        for i in range(n):
            closest[s, i] = (x[i] - x[c]) ** 2 + (y[i] - y[c]) ** 2 + (z[i] - z[c]) ** 2
    cumulative = np.empty(count * n)
    draws = np.empty(trials, dtype=np.int64)
    near = np.empty(n)
    for step in range(steps):
        total = 0.0
        for s in range(count):  # one running sum over all seedings, as numpy's cumsum
            for i in range(n):
                total += closest[s, i] * weights[i]
                cumulative[s * n + i] = total
        for s in range(count):
            end = cumulative[(s + 1) * n - 1]
            start = cumulative[s * n - 1] if s > 0 else 0.0
            best, best_score = 0, np.inf
            for t in range(trials):
                target = start + uniforms[step, s, t] * (end - start)
                draw = np.searchsorted(cumulative, target, side="right") - n * s
                draw = min(max(draw, 0), n - 1)
                draws[t] = draw
                score = _error_with(x, y, z, draw, closest[s], weights)
                if score < best_score:
                    best, best_score = t, score
            c = draws[best]
            chosen[s, step + 1] = c
            for i in range(n):
                d = (x[i] - x[c]) ** 2 + (y[i] - y[c]) ** 2 + (z[i] - z[c]) ** 2
                near[i] = min(d, closest[s, i])
            closest[s] = near
    errors = np.zeros(count)
    for s in range(count):
        for i in range(n):
            errors[s] += closest[s, i] * weights[i]
    return chosen, errors


def warm() -> None:
    """Load the compiled loops now (from numba's cache: a few tenths of a second once)."""
    quant = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    neighbors, gaps, radius = center_neighbors(quant, 1)
    assign(np.zeros((1, 3)), np.ones(1), np.zeros((1, 3)), quant, np.zeros(1, dtype=np.int64),
           neighbors, gaps, radius, np.full(1, -np.inf), np.zeros(2), 0, 1, False)
    seedings(quant, np.ones(2), np.zeros(1, dtype=np.int64), np.zeros((1, 1, 1)))
