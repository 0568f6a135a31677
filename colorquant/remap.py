"""Nearest palette color for each distinct color, computed exactly."""

from __future__ import annotations

import numpy as np

#: Rows per block of the distance computation: bounds memory to CHUNK × k floats (8 MB, k=256).
CHUNK = 1 << 13


def nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center for every point (squared Euclidean distance).

    Uses ``argmin_j(|c_j|^2 - 2 x·c_j)``, the product summed channel by channel in numpy (no
    BLAS: with 3 or 4 channels a matrix product gains nothing and would start threads). With
    the whole-number float32 coordinates of :meth:`RGBSpace.metric` every term and partial
    sum is an integer below 2**24, so the result is exact; ties go to the lowest index.

    Parameters
    ----------
    points : ndarray of float32, shape (m, C)
    centers : ndarray of float32, shape (k, C), k <= 256

    Returns
    -------
    ndarray of uint8, shape (m,)
    """
    points = np.asarray(points, dtype=np.float32)
    centers = np.asarray(centers, dtype=np.float32)
    if len(centers) > 256:
        raise ValueError(f"at most 256 centers, got {len(centers)}")
    norms = (centers * centers).sum(axis=1)
    minus_twice = -2.0 * centers.T
    out = np.empty(len(points), dtype=np.uint8)
    scores = np.empty((min(CHUNK, len(points)), len(centers)), dtype=np.float32)
    for start in range(0, len(points), CHUNK):
        block = points[start : start + CHUNK]
        view = scores[: len(block)]
        np.multiply(block[:, :1], minus_twice[0], out=view)
        for c in range(1, block.shape[1]):
            view += block[:, c : c + 1] * minus_twice[c]
        view += norms
        out[start : start + CHUNK] = view.argmin(axis=1)
    return out
