"""Error measures between an image and its quantized version (pure numpy)."""

from __future__ import annotations

import math

import numpy as np

#: Distinct colors a step of :func:`weighted_sse`.
BLOCK = 1 << 16


def weighted_sse(original: np.ndarray, approx: np.ndarray, weights: np.ndarray) -> int:
    """Sum of squared 0–255 channel differences, each row weighted by a pixel count (exact
    int64 arithmetic).

    Parameters
    ----------
    original, approx : ndarray of uint8, shape (m, C)
        Distinct colors and what each became.
    weights : ndarray of int, shape (m,)
        Pixels of each distinct color.
    """
    weights = np.asarray(weights, dtype=np.int64)
    total = 0
    for start in range(0, len(original), BLOCK):  # bounded temporaries for large histograms
        stop = start + BLOCK
        diff = original[start:stop].astype(np.int32) - approx[start:stop].astype(np.int32)
        per_color = np.einsum("ij,ij->i", diff, diff).astype(np.int64)
        total += int(np.dot(per_color, weights[start:stop]))
    return total


def weighted_mse(original: np.ndarray, approx: np.ndarray, weights: np.ndarray) -> float:
    """Mean squared error per channel, 0–255 scale (:func:`weighted_sse` per channel value)."""
    return mse(weighted_sse(original, approx, weights), int(np.sum(weights)) * original.shape[1])


def mse(sse: int, values: int) -> float:
    """A sum of squared channel differences over ``values`` channel values, as their mean."""
    return sse / values if values else 0.0


def psnr(mse_value: float) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit channels (inf for identical images)."""
    return math.inf if mse_value == 0 else 10.0 * math.log10(255.0**2 / mse_value)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 color difference of CIE L*a*b* pairs (Sharma, Wu and Dalal, 2005).

    Parameters
    ----------
    lab1, lab2 : ndarray of float, shape (m, 3)

    Returns
    -------
    ndarray of float64, shape (m,)
    """
    L1, a1, b1 = np.asarray(lab1, dtype=np.float64).T
    L2, a2, b2 = np.asarray(lab2, dtype=np.float64).T
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    both = c1p * c2p != 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(both, dh, 0.0)
    d_l, d_c = L2 - L1, c2p - c1p
    d_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    l_mean, cp_mean = (L1 + L2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(np.abs(h1p - h2p) <= 180, h_sum / 2,
                      np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2))
    h_mean = np.where(both, h_mean, h_sum)
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    d_theta = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_mean**7 / (cp_mean**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2
                   + r_t * (d_c / s_c) * (d_h / s_h))


def mean_delta_e(original: np.ndarray, approx: np.ndarray, weights: np.ndarray) -> float:
    """Mean CIEDE2000 between sRGB colors and what they became, weighted by pixel counts.

    Parameters
    ----------
    original, approx : ndarray of uint8, shape (m, C)
        Distinct colors (or distinct input/output pairs) and what each became; alpha is
        ignored.
    weights : ndarray of int, shape (m,)
    """
    from .colorspace import srgb_to_cielab

    total = float(np.sum(weights))
    if total == 0:
        return 0.0
    diff = delta_e2000(srgb_to_cielab(original), srgb_to_cielab(approx))
    return float(np.dot(diff, np.asarray(weights, dtype=np.float64)) / total)
