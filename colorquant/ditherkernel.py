"""The per-pixel loops of dithering, compiled with numba (imported only when dithering).

Both loops pick the exactly nearest palette color (float64 sum of squared channel differences
in channel order, the first of equals in palette order) through candidate lists on a coarse
grid: a palette color is listed for a cell when its smallest possible distance to a point of
the cell is at most the smallest largest distance of any palette color to the cell, so the
nearest color of any point in the cell is always among the cell's candidates. A point outside
the grid is compared with every palette color.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Floyd–Steinberg weights (exact binary fractions): ahead, behind-below, below, ahead-below.
W_AHEAD, W_BEHIND_BELOW, W_BELOW, W_AHEAD_BELOW = 7 / 16, 3 / 16, 5 / 16, 1 / 16


@njit(cache=True)
def candidate_grid(palette, lo, step, cells):
    """Candidate lists of a grid of ``cells`` per channel over ``lo + [0, cells * step]``.

    Returns (start, members): cell ``i``'s candidates are ``members[start[i]:start[i + 1]]``,
    ascending.
    """
    k, channels = palette.shape
    n_cells = cells**channels
    start = np.zeros(n_cells + 1, dtype=np.int64)
    members = np.empty(n_cells * k, dtype=np.int16)
    low = np.empty(channels)
    high = np.empty(channels)
    near = np.empty(k)
    count = 0
    for cell in range(n_cells):
        rest = cell
        for c in range(channels - 1, -1, -1):
            index = rest % cells
            rest //= cells
            pad = 1e-9 * step[c]
            low[c] = lo[c] + index * step[c] - pad
            high[c] = lo[c] + (index + 1) * step[c] + pad
        bound = np.inf
        for j in range(k):
            d_near = 0.0
            d_far = 0.0
            for c in range(channels):
                p = palette[j, c]
                if p < low[c]:
                    d_near += (low[c] - p) ** 2
                elif p > high[c]:
                    d_near += (p - high[c]) ** 2
                d_far += max(p - low[c], high[c] - p) ** 2
            near[j] = d_near
            bound = min(bound, d_far)
        bound = bound * (1 + 1e-9)
        start[cell] = count
        for j in range(k):
            if near[j] <= bound:
                members[count] = j
                count += 1
    start[n_cells] = count
    return start, members[:count].copy()


@njit(cache=True, inline="always")
def _nearest(point, palette, lo, step, cells, start, members):
    """Index of the nearest palette color of one point (see the module docstring)."""
    k, channels = palette.shape
    cell = 0
    inside = True
    for c in range(channels):
        index = int(np.floor((point[c] - lo[c]) / step[c]))
        if index < 0 or index >= cells:
            inside = False
            index = 0
        cell = cell * cells + index
    best = -1
    best_d = np.inf
    if inside:
        for m in range(start[cell], start[cell + 1]):
            j = members[m]
            d = 0.0
            for c in range(channels):
                diff = point[c] - palette[j, c]
                d += diff * diff
            if d < best_d:
                best_d = d
                best = j
    else:
        for j in range(k):
            d = 0.0
            for c in range(channels):
                diff = point[c] - palette[j, c]
                d += diff * diff
            if d < best_d:
                best_d = d
                best = j
    return best


@njit(cache=True)
def nearest_points(points, palette, lo, step, cells, start, members, out):
    """``out[i]`` = index of the nearest palette color of ``points[i]`` (float64 (n, C))."""
    for i in range(points.shape[0]):
        out[i] = _nearest(points[i], palette, lo, step, cells, start, members)


@njit(cache=True)
def diffuse_band(coords, skip, rows, first_row, palette, lo, step, cells, start, members,
                 box_lo, box_hi, strength, edge, carry, out):
    """Floyd–Steinberg over the first ``rows`` rows of a band, serpentine (even image rows
    left to right, odd rows right to left).

    ``coords`` (h, w, C) float64 are the pixels in the diffusion space and ``skip`` (h, w)
    marks pixels that take no part (fully transparent); a row past ``rows`` (the next band's
    first) is only looked at. ``first_row`` is the band's row in the image; ``carry``
    (w, C) holds the error diffused into the band's first row and is updated in place to the
    error for row ``rows``. For each visible pixel in scan order: ``want = clip(pixel + error,
    box_lo, box_hi)``; ``out`` = the nearest palette index of ``want``; ``e = (want - chosen)
    * strength`` goes 7/16 ahead, 3/16 behind-below, 5/16 below, 1/16 ahead-below, added in
    that order, and only to visible pixels inside the image. With ``edge > 0`` no error goes
    to a neighbour whose pixel is farther than ``edge`` (Euclidean) from this pixel.
    """
    h, w, channels = coords.shape
    cur = carry
    nxt = np.zeros_like(carry)
    want = np.empty(channels)
    err = np.empty(channels)
    edge2 = edge * edge
    for y in range(rows):
        forward = (first_row + y) % 2 == 0
        d = 1 if forward else -1
        for step_x in range(w):
            x = step_x if forward else w - 1 - step_x
            if skip[y, x]:
                continue
            for c in range(channels):
                want[c] = min(max(coords[y, x, c] + cur[x, c], box_lo[c]), box_hi[c])
            j = _nearest(want, palette, lo, step, cells, start, members)
            out[y, x] = j
            for c in range(channels):
                err[c] = (want[c] - palette[j, c]) * strength
            _spread(coords, skip, edge2, err, cur, y, x, y, x + d, W_AHEAD)
            if y + 1 < h:
                _spread(coords, skip, edge2, err, nxt, y, x, y + 1, x - d, W_BEHIND_BELOW)
                _spread(coords, skip, edge2, err, nxt, y, x, y + 1, x, W_BELOW)
                _spread(coords, skip, edge2, err, nxt, y, x, y + 1, x + d, W_AHEAD_BELOW)
        cur, nxt = nxt, cur
        nxt[:] = 0.0
    carry[:] = cur
    return carry


@njit(cache=True, inline="always")
def _spread(coords, skip, edge2, err, row, y0, x0, y1, x1, weight):
    """Add ``err * weight`` to pixel (y1, x1)'s entry of ``row``, if it takes part."""
    if x1 < 0 or x1 >= coords.shape[1] or skip[y1, x1]:
        return
    if edge2 > 0.0:
        d = 0.0
        for c in range(coords.shape[2]):
            diff = coords[y0, x0, c] - coords[y1, x1, c]
            d += diff * diff
        if d > edge2:
            return
    for c in range(coords.shape[2]):
        row[x1, c] += err[c] * weight
