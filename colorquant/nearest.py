"""Nearest palette color for each distinct color, computed exactly."""

from __future__ import annotations

import numpy as np

#: Rows per block of the distance computation: small enough that a CHUNK × k block of floats
#: stays in the CPU cache even at k=256, large enough that the matrix product is efficient.
CHUNK = 1 << 9


def nearest(points: np.ndarray, centers: np.ndarray, *, exact: type = np.float32) -> np.ndarray:
    """Index of the nearest center for every point (squared Euclidean distance).

    Uses ``argmin_j(|c_j|^2 - 2 x·c_j)`` with one float32 matrix product per block (BLAS does
    the work, instead of a loop over the channels). With the whole-number float32
    coordinates of :meth:`RGBSpace.metric` every product and partial sum is an integer below
    2**24, so the result is exact whatever BLAS kernel or thread count computes it; ties go to
    the lowest index. ``exact=np.float64`` does the same for whole-number coordinates whose
    products and sums stay below 2**53 (the premultiplied ones of
    :class:`~colorquant.colorspace.Premultiplied`).

    Parameters
    ----------
    points : ndarray of float32 (or ``exact``), shape (m, C)
    centers : ndarray of float32 (or ``exact``), shape (k, C), k <= 256
    exact : the float type of the arithmetic

    Returns
    -------
    ndarray of uint8, shape (m,)
    """
    points = np.asarray(points, dtype=exact)
    centers = np.asarray(centers, dtype=exact)
    if len(centers) > 256:
        raise ValueError(f"at most 256 centers, got {len(centers)}")
    norms = (centers * centers).sum(axis=1)
    minus_twice = -2.0 * centers.T
    out = np.empty(len(points), dtype=np.uint8)
    for start in range(0, len(points), CHUNK):
        scores = points[start : start + CHUNK] @ minus_twice
        scores += norms
        out[start : start + CHUNK] = scores.argmin(axis=1)
    return out
