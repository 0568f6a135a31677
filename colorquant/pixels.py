"""Pixels as packed integer keys, and their histogram of distinct colors.

A pixel is packed into one little-endian ``uint32`` key, ``r | g << 8 | b << 16 | a << 24``,
straight from Pillow's 4-bytes-per-pixel buffer. Every later stage works on the (much smaller)
histogram of distinct keys, and a lookup maps the result back to every pixel. No color math here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB_MASK = np.uint32(0x00FFFFFF)
#: Pixels processed per step by the large-image passes; bounds their temporary memory.
STRIP = 1 << 22
#: From this many pixels on, a dense 2**24 bincount beats sorting for the RGB histogram.
DENSE_FROM = 1 << 20


@dataclass(frozen=True, eq=False)
class Histogram:
    """Distinct colors of an image with their pixel counts.

    Attributes
    ----------
    keys : ndarray of uint32, shape (m,)
        Packed colors, sorted ascending, unique.
    counts : ndarray of int64, shape (m,)
        Pixels of each color.
    channels : int
        3 for RGB, 4 for RGBA.
    """

    keys: np.ndarray
    counts: np.ndarray
    channels: int

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def colors(self) -> np.ndarray:
        """The distinct colors, uint8 of shape (m, channels)."""
        return unpack(self.keys, self.channels)

    @property
    def n_pixels(self) -> int:
        return int(self.counts.sum())


def pixel_keys(image_bytes: bytes | bytearray | memoryview) -> np.ndarray:
    """View a Pillow ``RGBX``/``RGBA`` raw buffer as one uint32 key per pixel (no copy)."""
    return np.frombuffer(image_bytes, dtype="<u4")


def canonical(keys: np.ndarray, channels: int) -> np.ndarray:
    """Keys with padding dropped (RGB) or every fully transparent pixel made key 0 (RGBA)."""
    if channels == 3:
        return keys & RGB_MASK
    return np.where(keys >> 24 == 0, np.uint32(0), keys)


def unpack(keys: np.ndarray, channels: int) -> np.ndarray:
    """Packed keys (m,) to uint8 colors (m, channels)."""
    as_bytes = np.ascontiguousarray(keys, dtype="<u4").view(np.uint8).reshape(-1, 4)
    return np.ascontiguousarray(as_bytes[:, :channels])


def pack(colors: np.ndarray) -> np.ndarray:
    """uint8 colors (m, 3 or 4) to packed uint32 keys (m,), the inverse of :func:`unpack`."""
    colors = np.asarray(colors, dtype=np.uint8)
    padded = np.zeros((len(colors), 4), dtype=np.uint8)
    padded[:, : colors.shape[1]] = colors
    return padded.view("<u4").reshape(-1).astype(np.uint32)


def histogram(keys: np.ndarray, channels: int) -> Histogram:
    """Count the distinct colors of raw pixel keys.

    Parameters
    ----------
    keys : ndarray of uint32, shape (n,)
        Raw keys from :func:`pixel_keys`.
    channels : int
        3 (RGB, padding byte ignored) or 4 (RGBA).
    """
    n = len(keys)
    if channels == 3 and n >= DENSE_FROM:
        dense = np.zeros(1 << 24, dtype=np.int64)
        for start in range(0, n, STRIP):
            dense += np.bincount(keys[start : start + STRIP] & RGB_MASK, minlength=1 << 24)
        distinct = np.flatnonzero(dense)
        return Histogram(distinct.astype(np.uint32), dense[distinct], channels)
    distinct, counts = np.unique(canonical(keys, channels), return_counts=True)
    return Histogram(distinct.astype(np.uint32), counts.astype(np.int64), channels)


def lookup(keys: np.ndarray, hist: Histogram, labels: np.ndarray) -> np.ndarray:
    """Map every pixel to the label of its distinct color.

    Parameters
    ----------
    keys : ndarray of uint32, shape (n,)
        Raw keys of the same image the histogram was made from.
    hist : Histogram
    labels : ndarray of uint8, shape (m,)
        One label per distinct color of ``hist``.

    Returns
    -------
    ndarray of uint8, shape (n,)
    """
    n = len(keys)
    out = np.empty(n, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    if hist.channels == 3 and n >= DENSE_FROM:
        table = np.zeros(1 << 24, dtype=np.uint8)
        table[hist.keys] = labels
        for start in range(0, n, STRIP):
            stop = min(start + STRIP, n)
            np.take(table, keys[start:stop] & RGB_MASK, out=out[start:stop])
        return out
    for start in range(0, n, STRIP):
        stop = min(start + STRIP, n)
        where = np.searchsorted(hist.keys, canonical(keys[start:stop], hist.channels))
        np.take(labels, where, out=out[start:stop])
    return out


def merge(histograms: list[Histogram]) -> Histogram:
    """One histogram counting the pixels of several (frames of an animation, a batch of files).

    All inputs must have the same number of channels.
    """
    if not histograms:
        raise ValueError("merge needs at least one histogram")
    channels = {h.channels for h in histograms}
    if len(channels) != 1:
        raise ValueError(f"cannot merge histograms with different channels: {sorted(channels)}")
    keys = np.concatenate([h.keys for h in histograms])
    counts = np.concatenate([h.counts for h in histograms])
    distinct, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=counts, minlength=len(distinct))
    return Histogram(distinct.astype(np.uint32), summed.astype(np.int64), channels.pop())
