"""Error measures between an image and its quantized version (pure numpy)."""

from __future__ import annotations

import math

import numpy as np


def weighted_mse(original: np.ndarray, approx: np.ndarray, weights: np.ndarray) -> float:
    """Mean squared error per channel, 0–255 scale, with each row weighted by a pixel count.

    Parameters
    ----------
    original, approx : ndarray of uint8, shape (m, C)
        Distinct colors and what each became.
    weights : ndarray of int, shape (m,)
        Pixels of each distinct color.
    """
    diff = original.astype(np.int64) - approx.astype(np.int64)
    per_color = np.einsum("ij,ij->i", diff, diff)
    total = int(np.dot(per_color, np.asarray(weights, dtype=np.int64)))
    n = int(np.sum(weights)) * original.shape[1]
    return total / n if n else 0.0


def psnr(mse_value: float) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit channels (inf for identical images)."""
    return math.inf if mse_value == 0 else 10.0 * math.log10(255.0**2 / mse_value)
