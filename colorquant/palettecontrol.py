"""Palette control: exactly N colors, pinned colors, the fewest colors for a quality target.

Palette control is fitting: it works on histograms (distinct colors with pixel counts) and
palettes (uint8 centers) only. The k-means fit itself and the nearest-color search (with its
tie rule) are passed in by the caller, so this module never branches on a color space or
touches an image.

Every step here keeps the exact objective in view: the error of a palette is the weighted sum
of squared distances from each distinct color to its *nearest* palette color (what PSNR
measures). Adding a palette color can only lower or keep that error (each color's nearest
distance is a minimum over a larger set), which is why filling a short palette is safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import fit, metrics, pixels

if TYPE_CHECKING:
    from .colorspace import Space

#: (distinct colors uint8 (m, C), centers uint8 (k, C)) -> index of each color's nearest center.
Nearest = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: k -> at most k fitted uint8 centers for the colors at hand.
Fitter = Callable[[int], np.ndarray]

#: Rounds of split-then-refine when filling a short palette.
FILL_ROUNDS = 3
#: Exact Lloyd steps after a fill, around pinned colors, and at a target's chosen size.
FILL_STEPS = 5
PIN_STEPS = 10


@dataclass(frozen=True)
class WeightedColors:
    """The colors palette control works on: distinct uint8 colors and their pixel counts."""

    colors: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.colors)


def sse(colors: np.ndarray, weights: np.ndarray, centers: np.ndarray,
        labels: np.ndarray) -> int:
    """Weighted sum of squared 0–255 distances from each color to its labelled center."""
    return metrics.weighted_sse(colors, centers[labels], weights)


def sse_limit(psnr: float, values: int) -> float:
    """The largest weighted squared error of ``values`` channel values (pixels × channels)
    whose PSNR is at least ``psnr`` dB."""
    return 255.0**2 / 10.0 ** (psnr / 10.0) * values


def _distinct(centers: np.ndarray, fixed: int) -> np.ndarray:
    """The centers without repeats, the first ``fixed`` (pinned) kept first and in order."""
    seen: set[bytes] = set()
    keep = []
    for i, row in enumerate(centers):
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
        elif i < fixed:
            raise ValueError("pinned colors must be distinct")
    return centers[keep]


def _assign(hist: WeightedColors, centers: np.ndarray, fixed: int, nearest: Nearest,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Distinct centers (pinned first) that at least one color uses, pins always kept, and the
    label of each color."""
    centers = _distinct(centers, fixed)
    labels = nearest(hist.colors, centers)
    used = np.bincount(labels, minlength=len(centers)) > 0
    used[:fixed] = True
    if used.all():
        return centers, labels
    # An unused center is nobody's nearest: dropping it changes no color's choice.
    renumber = np.cumsum(used) - 1
    return centers[used], renumber[labels].astype(labels.dtype)


def _split(hist: WeightedColors, centers: np.ndarray, labels: np.ndarray, missing: int,
           ) -> np.ndarray:
    """``missing`` new centers, each a distinct color not yet in the palette, taken where the
    error is largest: the weighted-farthest color of each cluster, clusters by descending
    weighted error, then the remaining colors by descending weighted error."""
    diff = hist.colors.astype(np.int64) - centers[labels].astype(np.int64)
    error = np.einsum("ij,ij->i", diff, diff) * np.asarray(hist.weights, dtype=np.int64)
    cluster = np.bincount(labels, weights=error.astype(np.float64), minlength=len(centers))
    # Colors grouped by cluster (heaviest error first), the worst color of each first.
    order = np.lexsort((np.arange(len(error)), -error, -cluster[labels], labels))
    first = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    first = first[error[first] > 0]
    first = first[np.lexsort((labels[first], -cluster[labels[first]]))]
    picked = list(first[:missing])
    if len(picked) < missing:
        chosen = set(picked)
        rest = [i for i in np.lexsort((np.arange(len(error)), -error))
                if error[i] > 0 and i not in chosen]
        picked += rest[: missing - len(picked)]
    return np.vstack([centers, hist.colors[np.array(picked, dtype=np.int64)]])


def refine(hist: WeightedColors, centers: np.ndarray, fixed: int, *, space: Space,
           steps: int) -> np.ndarray:
    """Exact weighted Lloyd steps (:func:`fit.lloyd_refine`) in which the first ``fixed``
    centers never move; returns uint8 centers (possibly with repeats)."""
    weights = np.asarray(hist.weights, dtype=np.float64)
    coords = space.encode(hist.colors)
    points, point_w = fit.reduce_points(hist.colors, weights, coords, fit.REFINE_POINTS)
    point_colors = hist.colors if points is coords else space.decode(points)
    start = space.encode(centers)
    if fixed == 0:
        moved = fit.lloyd_refine(point_colors, point_w, points, start, space=space,
                                 steps=steps)
    else:
        moved = start.copy()
        for _ in range(steps):
            moved = fit.lloyd_refine(point_colors, point_w, points, moved, space=space, steps=1)
            moved[:fixed] = start[:fixed]
    out = space.decode(moved)
    out[:fixed] = centers[:fixed]
    if out.shape[1] == 4:  # a mean of visible colors stays visible
        out[fixed:, 3] = np.maximum(out[fixed:, 3], 1)
    return out


def exact(hist: WeightedColors, centers: np.ndarray, k: int, *, nearest: Nearest,
          space: Space, fixed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``k`` distinct centers, each used by at least one color (the first ``fixed``,
    pinned, are kept even if unused), with each color's label.

    Short palettes (centers that rounded together, clusters left empty) are filled by
    :func:`_split`, then refined; the refined palette is kept only when it still has ``k``
    used colors and no higher error, so the result's error is never above the short
    palette's. With too few distinct colors to fill ``k``, the palette is every color (and
    the pins). A palette that is already full comes back as it is (no extra work).
    """
    centers, labels = _assign(hist, centers, fixed, nearest)
    if len(centers) >= k:
        return centers, labels
    absent = int(np.count_nonzero(~np.isin(pixels.pack(hist.colors), pixels.pack(centers))))
    k = min(k, len(centers) + absent)
    if len(centers) >= k:
        return centers, labels
    best = None
    for _ in range(FILL_ROUNDS):
        centers = _split(hist, centers, labels, k - len(centers))
        labels = nearest(hist.colors, centers)
        error = sse(hist.colors, hist.weights, centers, labels)
        if best is None or error <= best[2]:
            best = (centers, labels, error)
        moved, moved_labels = _assign(hist, refine(hist, centers, fixed, space=space,
                                                   steps=FILL_STEPS), fixed, nearest)
        moved_error = sse(hist.colors, hist.weights, moved, moved_labels)
        if moved_error > best[2]:
            break
        if len(moved) == k:
            best = (moved, moved_labels, moved_error)
            break
        centers, labels = moved, moved_labels  # better but short again: fill once more
    return best[0], best[1]


def pinned(hist: WeightedColors, pins: np.ndarray, k: int, *, fitter: Fitter, nearest: Nearest,
           space: Space) -> tuple[np.ndarray, np.ndarray]:
    """``k`` centers, the first ``len(pins)`` being the pins exactly, the others fitted around
    them, with each color's label.

    The free centers start from the normal fit of ``k`` colors with the center nearest to
    each pin swapped for the pin, then move by exact Lloyd steps in which the pins stay put;
    the swapped palette is kept if the steps do not lower the error, so the result is never
    worse than swapping.
    """
    m = len(pins)
    if m > k:
        raise ValueError(f"{m} pinned colors do not fit in {k} palette entries")
    others = ~np.isin(pixels.pack(hist.colors), pixels.pack(pins))
    if int(others.sum()) <= k - m:  # room for every color: no fit
        return exact(hist, np.vstack([pins, hist.colors[others]]), k, nearest=nearest,
                     space=space, fixed=m)
    swapped = swap(fitter(k), pins, space)
    start, start_labels = exact(hist, swapped, k, nearest=nearest, space=space, fixed=m)
    moved, moved_labels = exact(hist, refine(hist, start, m, space=space, steps=PIN_STEPS), k,
                                nearest=nearest, space=space, fixed=m)
    if (sse(hist.colors, hist.weights, moved, moved_labels)
            <= sse(hist.colors, hist.weights, start, start_labels)):
        return moved, moved_labels
    return start, start_labels


def swap(centers: np.ndarray, pins: np.ndarray, space: Space) -> np.ndarray:
    """The pins first, then the centers left after removing, for each pin in turn, the
    remaining center nearest to it (the "fit, then swap in the pins" palette)."""
    points = space.metric(centers).astype(np.float64)
    left = list(range(len(centers)))
    for pin in space.metric(pins).astype(np.float64):
        if len(left) == 0:
            break
        d = ((points[left] - pin) ** 2).sum(axis=1)
        left.pop(int(np.argmin(d)))
    return np.vstack([pins, centers[left]])


# --- the fewest colors that reach a target ---------------------------------------------


def ward_sequence(hist: WeightedColors, centers: np.ndarray, labels: np.ndarray, fixed: int,
                  space: Space, smallest: int) -> dict[int, np.ndarray]:
    """Palettes of every size from ``len(centers)`` down to ``smallest``, each made from the
    next larger by merging the two clusters whose merge raises the weighted error least
    (Ward: w_a w_b / (w_a + w_b) |c_a − c_b|²); a merge into a pinned cluster keeps the pin
    (cost w_free |c_free − pin|²), two pins never merge. Returns uint8 centers by size, pins
    first (the full size is ``centers`` itself)."""
    k = len(centers)
    weights = np.bincount(labels, weights=np.asarray(hist.weights, dtype=np.float64),
                          minlength=k)
    coords = space.encode(hist.colors)
    with np.errstate(invalid="ignore", divide="ignore"):  # an unused pin: set just below
        means = np.stack([np.bincount(labels, weights=hist.weights * coords[:, c],
                                      minlength=k) for c in range(coords.shape[1])], 1
                         ) / weights[:, None]
    means[:fixed] = space.encode(centers[:fixed])
    is_pin = np.arange(k) < fixed
    alive = np.ones(k, dtype=bool)
    sequence = {k: centers}

    def costs(a: int) -> np.ndarray:
        d = ((means - means[a]) ** 2).sum(axis=1)
        wa, w = weights[a], weights
        with np.errstate(invalid="ignore", divide="ignore"):  # two unused pins: set below
            ward = wa * w / (wa + w) * d
        cost = np.where(is_pin[a] | is_pin, np.where(is_pin[a], w, wa) * d, ward)
        cost[is_pin[a] & is_pin] = np.inf
        cost[~alive] = np.inf
        cost[a] = np.inf
        return cost

    table = np.stack([costs(a) for a in range(k)])
    for size in range(k - 1, smallest - 1, -1):
        flat = int(np.argmin(table))
        a, b = divmod(flat, k)
        if not np.isfinite(table[a, b]):
            break  # only pins are left
        if is_pin[b]:
            a, b = b, a
        if not is_pin[a]:
            means[a] = (weights[a] * means[a] + weights[b] * means[b]) / (weights[a] + weights[b])
        weights[a] += weights[b]
        alive[b] = False
        table[b, :] = np.inf
        table[:, b] = np.inf
        row = costs(a)
        table[a, :] = row
        table[:, a] = row
        out = space.decode(means[alive])
        out[:fixed] = centers[:fixed]
        if out.shape[1] == 4:  # a mean of visible colors stays visible
            out[fixed:, 3] = np.maximum(out[fixed:, 3], 1)
        sequence[size] = out
    return sequence


@dataclass(frozen=True)
class TargetResult:
    """The palette chosen for a target, and what the search did."""

    centers: np.ndarray
    labels: np.ndarray
    #: Palette sizes whose exact error was evaluated, in order, with that error (SSE).
    evaluated: tuple[tuple[int, int], ...]
    #: Whether the full palette's error is within the target's MIN (else nothing fits).
    reached: bool = True


def fewest(hist: WeightedColors, centers: np.ndarray, labels: np.ndarray, *, limit_min: float,
           limit_max: float, nearest: Nearest, space: Space, fixed: int = 0,
           smallest: int = 1) -> TargetResult:
    """The fewest colors, from a full palette down, whose error is at most ``limit_max``
    (the target's MAX); the full palette if none, marked not ``reached`` when even its error
    exceeds ``limit_min``.

    Bisection over the Ward sequence of the full palette (:func:`ward_sequence`) on the exact
    error after nearest mapping; it keeps "size ``lo`` misses, size ``hi`` reaches". The
    palette of size ``hi`` then gets exact-N filling and exact refinement (kept only if its
    error is not higher, so it still reaches); so does size ``lo`` = ``hi`` − 1, chosen
    instead if refinement makes it reach. The size below the chosen one misses in this
    sequence (unrefined).
    """
    full = sse(hist.colors, hist.weights, centers, labels)
    evaluated = [(len(centers), full)]
    if full > limit_min:
        return TargetResult(centers, labels, tuple(evaluated), reached=False)
    if full > limit_max:
        return TargetResult(centers, labels, tuple(evaluated))
    smallest = max(smallest, fixed, 1)
    sequence = ward_sequence(hist, centers, labels, fixed, space, smallest)
    smallest = min(sequence)
    lo, hi = smallest - 1, len(centers)
    found = {hi: (centers, labels, full)}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_centers, mid_labels = _assign(hist, sequence[mid], fixed, nearest)
        error = sse(hist.colors, hist.weights, mid_centers, mid_labels)
        evaluated.append((mid, error))
        if error <= limit_max:
            hi, found[mid] = mid, (mid_centers, mid_labels, error)
        else:
            lo = mid
    chosen, chosen_labels, _ = _polish(hist, found[hi][0], hi, fixed, nearest, space)
    if lo >= smallest:
        # One size less, refined, often reaches what its merged palette missed.
        fewer, fewer_labels, fewer_error = _polish(hist, sequence[lo], lo, fixed, nearest,
                                                   space)
        evaluated.append((lo, fewer_error))
        if fewer_error <= limit_max:
            chosen, chosen_labels = fewer, fewer_labels
    return TargetResult(chosen, chosen_labels, tuple(evaluated))


def _polish(hist: WeightedColors, centers: np.ndarray, n: int, fixed: int, nearest: Nearest,
            space: Space) -> tuple[np.ndarray, np.ndarray, int]:
    """Exactly ``n`` used colors from ``centers``, then exact Lloyd steps kept only if they do
    not raise the error; the centers, labels and error."""
    centers, labels = exact(hist, centers, n, nearest=nearest, space=space, fixed=fixed)
    error = sse(hist.colors, hist.weights, centers, labels)
    moved, moved_labels = exact(hist, refine(hist, centers, fixed, space=space,
                                             steps=FILL_STEPS), n, nearest=nearest,
                                space=space, fixed=fixed)
    moved_error = sse(hist.colors, hist.weights, moved, moved_labels)
    if moved_error <= error:
        return moved, moved_labels, moved_error
    return centers, labels, error


def control(hist: WeightedColors, k: int, *, fitter: Fitter, nearest: Nearest, space: Space,
            pins: np.ndarray | None = None, limits: tuple[float, float] | None = None,
            ) -> tuple[np.ndarray, np.ndarray, TargetResult | None]:
    """The palette of ``k`` entries for a histogram: exactly ``k`` used colors (or every
    distinct color when fewer), the ``pins`` first and exact, and with ``limits`` (the
    largest errors for the target's MIN and MAX) the fewest colors that reach it.

    Returns uint8 centers, each color's label and the target search (None without one).
    """
    fixed = 0 if pins is None else len(pins)
    if fixed:
        centers, labels = pinned(hist, pins, k, fitter=fitter, nearest=nearest, space=space)
    elif len(hist) <= k:
        centers, labels = hist.colors, nearest(hist.colors, hist.colors)
    else:
        centers, labels = exact(hist, fitter(k), k, nearest=nearest, space=space)
    if limits is None:
        return centers, labels, None
    found = fewest(hist, centers, labels, limit_min=limits[0], limit_max=limits[1],
                   nearest=nearest, space=space, fixed=fixed)
    return found.centers, found.labels, found
