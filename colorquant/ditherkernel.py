"""The per-pixel loops of dithering, compiled with numba (imported only when dithering).

Both loops pick the exactly nearest palette color (float64 sum of squared channel differences
in channel order, the first of equals in palette order) through candidate lists on a coarse
grid: a palette color is listed for a cell when its smallest possible distance to a point of
the cell is at most the smallest largest distance of any palette color to the cell, and no
other listed color is nearer than it to every point of the cell. So the nearest colors of any
point in the cell are always among the cell's candidates. A point outside the grid is
compared with every palette color.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import cached

#: Floyd–Steinberg weights (exact binary fractions): ahead, behind-below, below, ahead-below.
W_AHEAD, W_BEHIND_BELOW, W_BELOW, W_AHEAD_BELOW = 7 / 16, 3 / 16, 5 / 16, 1 / 16


#: The coarsest grid :func:`candidate_grid` builds over the whole palette; it halves the cells
#: from there to the grid asked for.
COARSE_CELLS = 8


@cached
def candidate_grid(palette, lo, step, cells):
    """Candidate lists of a grid of ``cells`` per channel over ``lo + [0, cells * step]``.

    Returns (start, members): cell ``i``'s candidates are ``members[start[i]:start[i + 1]]``,
    ascending. Built coarse to fine: the grid of ``cells / 2**n`` cells (the first at most
    :data:`COARSE_CELLS`) from every palette color, then each finer one from the lists of the
    cells that hold its cells. A cell's list holds the nearest colors of every point of the
    cell, so of every point of its sub-cells (:func:`_grid_level`). At k=256 the 32-cell grid
    took 7 ms, where building it from every color took 59 ms (a small image's whole mapping
    takes a few ms).
    """
    k = palette.shape[0]
    coarse = cells
    while coarse > COARSE_CELLS and coarse % 2 == 0:
        coarse //= 2
    start = np.array([0, k], dtype=np.int64)
    members = np.arange(k).astype(np.int16)
    parent = 1
    level = coarse
    while True:
        start, members = _grid_level(palette, lo, step * (cells // level), level, parent,
                                     start, members)
        if level == cells:
            return start, members
        parent = level
        level *= 2


@njit
def _grid_level(palette, lo, step, cells, parent_cells, parent_start, parent_members):
    """One grid of :func:`candidate_grid`: each cell's candidates among the candidates of the
    cell of the ``parent_cells`` grid that holds it (``parent_cells`` divides ``cells``; 1:
    every color).

    A pool color is listed when its smallest possible squared distance to a point of the cell
    is at most the smallest largest distance of any pool color to the cell. The distance bounds
    are sums of per-channel terms, tabulated once per (channel, cell row, palette color); the
    boxes are padded by 1e-9 steps and the bound by 1e-9 of itself, so rounding can only add
    candidates, never drop one. A listed color is then dropped when another is nearer to every
    point of the cell by a margin (:func:`_dominates`): the nearest of a point is never so
    dominated. At k=256 that cut the 32-cell lists from 7.9 colors a cell to 2.0. The nearest
    colors of a point are in the pool (the parent's list), and the pool's bound is no smaller
    than all colors': so they are listed.
    """
    k, channels = palette.shape
    n_cells = cells**channels
    ratio = cells // parent_cells
    near = np.zeros((channels, cells, k))
    far = np.zeros((channels, cells, k))
    for c in range(channels):
        pad = 1e-9 * step[c]
        for i in range(cells):
            low = lo[c] + i * step[c] - pad
            high = lo[c] + (i + 1) * step[c] + pad
            for j in range(k):
                p = palette[j, c]
                if p < low:
                    near[c, i, j] = (low - p) ** 2
                elif p > high:
                    near[c, i, j] = (p - high) ** 2
                far[c, i, j] = max(p - low, high - p) ** 2
    start = np.zeros(n_cells + 1, dtype=np.int64)
    members = np.empty(n_cells * 4, dtype=np.int16)
    index = np.zeros(channels, dtype=np.int64)
    d_near = np.empty(k)
    near_list = np.empty(k, dtype=np.int64)
    box_low, box_high = np.empty(channels), np.empty(channels)
    count = 0
    for cell in range(n_cells):
        rest = cell
        parent = 0
        scale = 1
        for c in range(channels - 1, -1, -1):
            index[c] = rest % cells
            rest //= cells
            parent += (index[c] // ratio) * scale
            scale *= parent_cells
        first, last = parent_start[parent], parent_start[parent + 1]
        bound = np.inf
        anchor = 0
        for m in range(first, last):
            j = parent_members[m]
            d = 0.0
            f = 0.0
            for c in range(channels):
                d += near[c, index[c], j]
                f += far[c, index[c], j]
            d_near[j] = d
            if f < bound:
                bound = f
                anchor = j
        bound = bound * (1 + 1e-9)
        listed = 0
        for m in range(first, last):
            j = parent_members[m]
            if d_near[j] <= bound:
                near_list[listed] = j
                listed += 1
        for c in range(channels):  # the padded box, for the dominance test
            pad = 1e-9 * step[c]
            box_low[c] = lo[c] + index[c] * step[c] - pad
            box_high[c] = lo[c] + (index[c] + 1) * step[c] + pad
        start[cell] = count
        if count + listed > len(members):
            grown = np.empty(2 * len(members) + listed, dtype=np.int16)
            grown[:count] = members[:count]
            members = grown
        for a in range(listed):
            j = near_list[a]
            # the anchor (the color of the smallest largest distance) drops most: it goes first
            dominated = j != anchor and _dominates(palette, anchor, j, box_low, box_high)
            for b in range(listed):
                if dominated:
                    break
                i = near_list[b]
                dominated = i != j and i != anchor and _dominates(palette, i, j, box_low,
                                                                  box_high)
            if not dominated:
                members[count] = j
                count += 1
    start[n_cells] = count
    return start, members[:count].copy()


@njit(inline="always")
def _dominates(palette, i, j, low, high):
    """Whether palette color ``i`` is nearer than ``j`` to every point of the box [low, high],
    by a margin far above float64 rounding (so ``j`` is never the nearest there, nor tied).

    ``|x - p_i|² - |x - p_j|² = -2 x·(p_i - p_j) + |p_i|² - |p_j|²`` is linear in ``x``: its
    largest value on the box is summed channel by channel from the box's ends.
    """
    largest = 0.0
    scale = 1.0
    for c in range(palette.shape[1]):
        pi, pj = palette[i, c], palette[j, c]
        diff = pi - pj
        largest += max(-2.0 * low[c] * diff, -2.0 * high[c] * diff) + pi * pi - pj * pj
        scale += max(low[c] * low[c], high[c] * high[c], pi * pi, pj * pj)
    return largest < -1e-9 * scale


@njit(inline="always")
def _nearest(want, palette, lo, inv_step, cells, start, members, channels):
    """Index of the palette color nearest to ``want`` (the first of equals): through the
    candidate list of its grid cell, or every color when it lies outside the grid. Inlined
    into the loops (a numba call with array arguments costs more than the search itself);
    ``channels`` is the caller's compile-time channel count."""
    k = palette.shape[0]
    cell = 0
    inside = True
    for c in range(channels):
        t = (want[c] - lo[c]) * inv_step[c]
        if 0.0 <= t < cells:
            cell = cell * cells + int(t)
        else:
            inside = False
    first, last = (start[cell], start[cell + 1]) if inside else (0, k)
    best = -1
    best_d = np.inf
    for m in range(first, last):
        j = members[m] if inside else m
        dist = 0.0
        for c in range(channels):
            diff = want[c] - palette[j, c]
            dist += diff * diff
        if dist < best_d:
            best_d = dist
            best = j
    return best


@njit(inline="always")
def _tally(band, y, x, chosen, visible, entries, counts, out, channels):
    """Record that pixel (y, x) takes palette entry ``chosen``: write it to ``out``, count it,
    and return its exact squared error against ``entries`` (its uint8 color), the pixel
    itself when ``visible``, else transparent black. Inlined into both loops."""
    out[y, x] = chosen
    counts[chosen] += 1
    sse = 0
    for c in range(channels):
        diff = (np.int64(band[y, x, c]) if visible else 0) - entries[chosen, c]
        sse += diff * diff
    return sse


@cached(nogil=True)
def map_band(band, coords, dims, rows, first_row, palette, lo, inv_step, cells, start,
             members, index, entries, clear, box_lo, box_hi, strength, edge, diffuse, carry,
             counts, out, quiet, damp):
    """Palette index of every pixel of the first ``rows`` rows of a band, with
    Floyd–Steinberg error diffusion when ``diffuse`` (serpentine: even image rows left to
    right, odd rows right to left), writing the indices and summing what the result reports.

    ``dims`` is a tuple of ``channels`` (3 or 4) zeros: numba compiles the loop once per tuple
    length, with the channel loops unrolled (a quarter to a third faster than a count known only
    at run time). ``band`` (h, w, 4) uint8 holds R, G, B[, A] in its first ``channels`` bytes;
    ``coords`` (h, w, C) are the same pixels in the search space (``band`` itself when those are
    the sRGB values, else float64). A row past ``rows`` (the next band's first) is only looked
    at. A fully transparent pixel (``channels`` 4, alpha 0) takes ``clear`` and no part in the
    diffusion. ``first_row`` is the band's row in the image; ``carry`` (w, C) holds the error
    diffused into the band's first row and is updated in place to the error for row ``rows``.
    ``quiet`` (h, w) uint8 marks the pixels that take no diffused error
    (:func:`colorquant.dither.fs_quiet`); read only when diffusing.
    For each visible pixel in scan order: ``want = clip(pixel + error, box_lo, box_hi)``
    (``want = pixel`` for a quiet one);
    ``out`` = ``index`` of the nearest of ``palette`` to ``want``; when diffusing, ``e = (want -
    chosen) * strength`` (the caller's strength, with the share of the error kept already in
    it; times 3/4 when ``|want - chosen|²``, summed in channel order, exceeds ``damp``) goes
    7/16 ahead, 3/16 behind-below, 5/16 below, 1/16 ahead-below, added in that order, and only
    to visible pixels inside the image. With ``edge > 0`` no error goes to a neighbour whose
    pixel is farther than ``edge`` (Euclidean, search coordinates) from this one.
    ``counts`` (pixels per palette entry) is added to in place; returns the exact sum
    of squared differences between each pixel (a transparent one as transparent black) and
    ``entries`` (the palette's uint8 colors) of its index.
    """
    channels = len(dims)
    h, w = band.shape[0], band.shape[1]
    acc = np.zeros((2, w, channels))  # error into the current row and the next
    acc[0] = carry
    want = np.empty(channels)
    err = np.empty(channels)
    edge2 = edge * edge
    sse = 0
    for y in range(rows):
        cur = y & 1
        nxt = 1 - cur
        forward = (first_row + y) % 2 == 0 or not diffuse
        d = 1 if forward else -1
        for step_x in range(w):
            x = step_x if forward else w - 1 - step_x
            if channels == 4 and band[y, x, 3] == 0:
                sse += _tally(band, y, x, clear, False, entries, counts, out, channels)
                continue
            still = diffuse and quiet[y, x] != 0
            for c in range(channels):
                wanted = np.float64(coords[y, x, c])
                if not still:
                    wanted += acc[cur, x, c]
                want[c] = min(max(wanted, box_lo[c]), box_hi[c])
            best = _nearest(want, palette, lo, inv_step, cells, start, members, channels)
            sse += _tally(band, y, x, index[best], True, entries, counts, out, channels)
            if not diffuse:
                continue
            big = 0.0
            for c in range(channels):
                diff = want[c] - palette[best, c]
                big += diff * diff
            scale = strength * 0.75 if big > damp else strength
            for c in range(channels):
                err[c] = (want[c] - palette[best, c]) * scale
            for target in range(4):
                ty = y if target == 0 else y + 1
                tx = x + d if target == 0 else x + (target - 2) * d
                if ty >= h or tx < 0 or tx >= w:
                    continue
                if channels == 4 and band[ty, tx, 3] == 0:
                    continue
                if edge2 > 0.0:
                    dist = 0.0
                    for c in range(channels):
                        diff = np.float64(coords[y, x, c]) - np.float64(coords[ty, tx, c])
                        dist += diff * diff
                    if dist > edge2:
                        continue
                row = cur if target == 0 else nxt
                weight = (W_AHEAD if target == 0 else W_BEHIND_BELOW if target == 1
                          else W_BELOW if target == 2 else W_AHEAD_BELOW)
                for c in range(channels):
                    acc[row, tx, c] += err[c] * weight
        if diffuse:
            acc[cur] = 0.0
    if diffuse:
        carry[:] = acc[rows & 1]
    return sse


@cached(nogil=True)
def threshold_band(band, dims, rows, first_row, offsets, palette, lo, inv_step, cells,
                   start, members, index, entries, clear, counts, out):
    """:func:`map_band` without diffusion for sRGB search coordinates, on the uint8 pixels
    themselves, writing palette indices and summing what the result reports.

    ``dims`` is as in :func:`map_band`. ``band`` (h, w, 4) uint8 holds the first ``rows`` rows
    (R, G, B[, A] in its first ``channels`` bytes). For each visible pixel: ``want =
    min(max(pixel + offsets[(y + first_row) % s, x % s], 0), 255)`` on R, G and B (alpha as it
    is), float64, exactly the values the mapper would build with numpy; ``out`` = ``index`` of
    the nearest of ``palette`` to ``want``, searched as :func:`map_band` searches. A fully
    transparent pixel (``channels`` 4, alpha 0) takes ``clear``. ``counts`` (pixels per palette
    entry) is added to in place; returns the exact sum of squared differences between each pixel
    (a transparent one as transparent black) and ``entries`` (the palette's uint8 colors) of its
    index.
    """
    channels = len(dims)
    w = band.shape[1]
    size_y, size_x = offsets.shape
    want = np.empty(channels)
    sse = 0
    for y in range(rows):
        row = offsets[(first_row + y) % size_y]
        column = -1  # x % size_x, counted (a division per pixel cost a tenth of the loop)
        for x in range(w):
            column += 1
            if column == size_x:
                column = 0
            if channels == 4 and band[y, x, 3] == 0:
                sse += _tally(band, y, x, clear, False, entries, counts, out, channels)
                continue
            offset = row[column]
            for c in range(channels):
                v = float(band[y, x, c])
                want[c] = min(max(v + offset, 0.0), 255.0) if c < 3 else v
            best = _nearest(want, palette, lo, inv_step, cells, start, members, channels)
            sse += _tally(band, y, x, index[best], True, entries, counts, out, channels)
    return sse


def warm() -> None:
    """Load the compiled loops now, with the argument types the mappers pass (numba's cache
    holds one entry per set of types): the warm worker does it once for all its calls."""
    index = np.zeros(2, dtype=np.intp)
    for channels in (3, 4):
        palette = np.zeros((2, channels))
        palette[1] = 255.0
        lo, step = np.full(channels, -1.0), np.full(channels, 300.0)
        start, members = candidate_grid(palette, lo, step, 1)
        band = np.frombuffer(bytes(8), dtype=np.uint8).reshape(1, 2, 4)  # read-only, as the
        entries = np.zeros((2, channels), dtype=np.int64)  # mappers' bands are
        counts = np.zeros(2, dtype=np.int64)
        out = np.zeros((1, 2), dtype=np.uint8)
        quiet = np.zeros((1, 2), dtype=np.uint8)
        for coords in (band, np.zeros((1, 2, channels))):  # sRGB search or float64 coords
            map_band(band, coords, (0,) * channels, 1, 0, palette, lo, 1.0 / step, 1, start,
                     members, index, entries, 0, palette[0], palette[1], 1.0, 0.0, True,
                     np.zeros((2, channels)), counts, out, quiet, 1.0)
        threshold_band(band, (0,) * channels, 1, 0, np.zeros((2, 2)), palette, lo, 1.0 / step, 1,
                       start, members, index, entries, 0, counts, out)
