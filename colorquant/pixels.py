"""Pixels as packed integer keys, and their histogram of distinct colors.

A pixel is packed into one little-endian ``uint32`` key, ``r | g << 8 | b << 16 | a << 24``,
straight from Pillow's 4-bytes-per-pixel buffer. Every later stage works on the (much smaller)
histogram of distinct keys, and a lookup maps the result back to every pixel. No color math here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")

RGB_MASK = np.uint32(0x00FFFFFF)
#: Pixels processed per step by the large-image passes; bounds their temporary memory.
STRIP = 1 << 20
#: From this many pixels on, a dense 2**24 bincount beats sorting for the RGB histogram.
DENSE_FROM = 1 << 20
#: From this many pixels on, a 16 MB lookup table beats a binary search (measured: the search
#: wins at 2**14 pixels, the table is 3x faster at 2**16); below it, zeroing the table for
#: each frame made a GIF of 3,000 one-pixel frames spend 10 s.
TABLE_FROM = 1 << 15
#: From this many pixels on, an RGB image's lookup runs in row ranges side by side, a thread
#: each (the histogram does not: ``np.add.at`` holds the GIL, measured).
PARALLEL_FROM = 1 << 22
#: Pixels a step of each thread of that lookup: its band, the band's bytes and their masked
#: keys are 12 bytes a pixel, a thread, beside the whole result.
LOOKUP_STRIP = 1 << 18

#: The compiled counting loops (:mod:`colorquant.pixelkernel`) once :func:`load_kernel` ran.
_KERNEL: Any = None


def load_kernel() -> None:
    """Count dense RGB histograms with compiled loops in this process and its forks: about
    2.5 times as fast as ``numpy.add.at`` at 24 MP, same result. For processes that load
    numba anyway (the warm worker); importing numba for one histogram would cost more."""
    global _KERNEL
    if _KERNEL is None:
        from . import pixelkernel

        pixelkernel.warm()
        _KERNEL = pixelkernel


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


def band_rows(width: int, pixels: int) -> int:
    """Rows of a band of about ``pixels`` pixels of an image ``width`` wide (at least one)."""
    return max(1, pixels // max(width, 1))


def bands(image: Image.Image, rows: int, *, top: int = 0,
          stop: int | None = None) -> Iterator[Image.Image]:
    """The image's rows ``top`` to ``stop`` (default all), ``rows`` at a time, each band
    copied out of Pillow's buffer on its own, so the whole image is never held twice."""
    width, height = image.size
    stop = height if stop is None else stop
    for first in range(top, stop, rows):
        yield image.crop((0, first, width, min(stop, first + rows)))


def key_strips(image: Image.Image, rows: int | None = None, *, top: int = 0,
               stop: int | None = None) -> Iterator[np.ndarray]:
    """Raw uint32 keys of a Pillow RGB/RGBA image (rows ``top`` to ``stop``, default all), a
    band of rows at a time (:func:`bands`): about :data:`STRIP` pixels unless ``rows`` says
    otherwise.
    """
    raw = "RGBX" if image.mode == "RGB" else "RGBA"
    for band in bands(image, rows or band_rows(image.width, STRIP), top=top, stop=stop):
        yield pixel_keys(band.tobytes("raw", raw))


def _row_ranges(image: Image.Image, threads: int) -> list[tuple[int, int]]:
    """The image's rows in ``threads`` ranges (one when it is smaller than
    :data:`PARALLEL_FROM` pixels or not RGB), as (first row, end row)."""
    width, height = image.size
    if image.mode != "RGB" or width * height < PARALLEL_FROM:
        threads = 1
    threads = max(1, min(threads, height))
    return [(height * i // threads, height * (i + 1) // threads) for i in range(threads)]


def _side_by_side(function: Callable[..., T], calls: list[tuple[Any, ...]]) -> list[T]:
    """``function(*args)`` for each ``args`` of ``calls``: the first on this thread, each
    other on a thread started for it; the results in order. A call whose thread cannot start
    (a process limit of the caller's) runs on this thread after the first."""
    if len(calls) == 1:
        return [function(*calls[0])]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(calls) - 1,
                            thread_name_prefix="colorquant-pixels") as pool:
        futures: list[Any] = []
        for args in calls[1:]:
            try:
                futures.append(pool.submit(function, *args))
            except RuntimeError:  # "can't start new thread"
                futures.append(args)
        first = function(*calls[0])
        return [first] + [f.result() if not isinstance(f, tuple) else function(*f)
                          for f in futures]


def _chunks(keys: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    if isinstance(keys, np.ndarray):
        for start in range(0, len(keys), STRIP):
            yield keys[start : start + STRIP]
    else:
        yield from keys


def histogram(keys: np.ndarray | Iterable[np.ndarray], channels: int, *,
              n_pixels: int | None = None) -> Histogram:
    """Count the distinct colors of raw pixel keys.

    Parameters
    ----------
    keys : ndarray of uint32, shape (n,), or an iterable of such arrays
        Raw keys from :func:`pixel_keys` (or the bands of :func:`key_strips`).
    channels : int
        3 (RGB, padding byte ignored) or 4 (RGBA).
    n_pixels : int, optional
        Total number of keys when ``keys`` is an iterable; picks the counting method.
    """
    n = len(keys) if isinstance(keys, np.ndarray) else n_pixels
    if channels == 3 and (n is None or n >= DENSE_FROM):
        # One counter per possible RGB color; np.add.at into 4-byte counters is several times
        # faster than summing per-band bincounts, and never needs a second 2**24 table.
        table = np.zeros(1 << 24, dtype=np.uint32 if (n or 0) < 1 << 32 else np.uint64)
        compiled = _KERNEL is not None and table.dtype == np.uint32
        for chunk in _chunks(keys):
            if compiled and chunk.dtype == np.uint32:
                _KERNEL.count_rgb(chunk, table)
            else:
                np.add.at(table, chunk & RGB_MASK, table.dtype.type(1))  # same dtype: fast
        if compiled:
            return Histogram(*_KERNEL.distinct_counts(table), channels)
        distinct = np.flatnonzero(table)
        return Histogram(distinct.astype(np.uint32), table[distinct].astype(np.int64), channels)
    parts = [np.unique(canonical(chunk, channels), return_counts=True) for chunk in _chunks(keys)]
    if len(parts) == 1:
        distinct, counts = parts[0]
        return Histogram(distinct.astype(np.uint32), counts.astype(np.int64), channels)
    return merge([Histogram(d.astype(np.uint32), c.astype(np.int64), channels) for d, c in parts]
                 or [Histogram(np.zeros(0, np.uint32), np.zeros(0, np.int64), channels)])


def lookup(keys: np.ndarray | Iterable[np.ndarray], hist: Histogram, labels: np.ndarray, *,
           n_pixels: int | None = None) -> np.ndarray:
    """Map every pixel to the label of its distinct color.

    Parameters
    ----------
    keys : ndarray of uint32, shape (n,), or an iterable of such arrays
        Raw keys of the same image the histogram was made from.
    hist : Histogram
    labels : ndarray of uint8, shape (m,)
        One label per distinct color of ``hist``.
    n_pixels : int, optional
        Total number of keys when ``keys`` is an iterable.

    Returns
    -------
    ndarray of uint8, shape (n,)
    """
    n = len(keys) if isinstance(keys, np.ndarray) else n_pixels
    if n is None:
        n = hist.n_pixels
    out = np.empty(n, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    table = _label_table(hist, labels) if hist.channels == 3 and n >= TABLE_FROM else None
    start = 0
    for chunk in _chunks(keys):
        stop = start + len(chunk)
        if table is not None:
            np.take(table, chunk & RGB_MASK, out=out[start:stop])
        else:
            where = np.searchsorted(hist.keys, canonical(chunk, hist.channels))
            np.take(labels, where, out=out[start:stop])
        start = stop
    if start != n:
        raise ValueError(f"expected {n} pixel keys, got {start}")
    return out


def image_lookup(image: Image.Image, hist: Histogram, labels: np.ndarray, *,
                 threads: int = 1) -> np.ndarray:
    """:func:`lookup` of a Pillow RGB/RGBA image's pixels (``hist`` made from them); an RGB
    image of at least :data:`PARALLEL_FROM` pixels is looked up in up to ``threads`` row
    ranges side by side, each writing its own rows of the result."""
    width, height = image.size
    ranges = _row_ranges(image, threads)
    if len(ranges) == 1:
        return lookup(key_strips(image), hist, labels, n_pixels=width * height)
    out = np.empty(width * height, dtype=np.uint8)
    table = _label_table(hist, labels)

    def fill(top: int, stop: int) -> int:
        start = top * width
        for chunk in key_strips(image, band_rows(width, LOOKUP_STRIP), top=top, stop=stop):
            np.take(table, chunk & RGB_MASK, out=out[start : start + len(chunk)])
            start += len(chunk)
        return start

    ends = _side_by_side(fill, ranges)
    if ends != [stop * width for _, stop in ranges]:
        raise ValueError("pixel keys do not match the image's size")
    return out


def _label_table(hist: Histogram, labels: np.ndarray) -> np.ndarray:
    """The label of every RGB key (16 MB; 0 for colors not in ``hist``)."""
    table = np.zeros(1 << 24, dtype=np.uint8)
    table[hist.keys] = np.asarray(labels, dtype=np.uint8)
    return table


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
