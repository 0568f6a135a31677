"""Pixels + palette → indices: the one mapping contract, with or without dithering.

:func:`map_pixels` is what the pipeline calls; a registry keyed by
:class:`~colorquant.options.Dither` picks the mapper. ``none`` maps each distinct color
through its exactly nearest palette index (a lookup, no per-pixel search); the dithering
mappers work on bands of rows, per pixel, in the color space's search coordinates:

- ``fs``: Floyd–Steinberg error diffusion, serpentine (see
  :func:`colorquant.ditherkernel.diffuse_band` for the exact arithmetic);
- ``ordered`` / ``blue-noise``: each pixel becomes the exactly nearest palette color of
  ``clip(pixel + t × strength × spread, 0, 255)`` (``t`` in [-0.5, 0.5) from the threshold
  matrix at the pixel's position, added to R, G and B; ``spread`` the median distance from a
  palette color to its nearest other palette color, in sRGB 0–255 units).

Exact nearest means: float64 squared distance summed channel by channel, ties to the palette
color that sorts first by (R, G, B[, A]). Fully transparent pixels take the palette's
transparent entry and no part in the diffusion; visible pixels only visible entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import pixels
from .colorspace import get_space
from .options import Dither, QuantizeOptions
from .palette import Palette

if TYPE_CHECKING:
    from .pipeline import Prepared

#: Pixels per band of the per-pixel mappers: bounds their float64 buffers (about 24 MB).
BAND_PIXELS = 1 << 20
#: Grid cells per channel of the candidate lists (3 and 4 channels).
GRID_CELLS = {3: 32, 4: 14}
#: ``fs`` limits diffusion at edges when this is positive: no error crosses to a neighbour
#: farther than this (in the space's search coordinates, as a share of the palette's span).
FS_EDGE = 0.0

BAYER8 = np.array([[0, 32, 8, 40, 2, 34, 10, 42], [48, 16, 56, 24, 50, 18, 58, 26],
                   [12, 44, 4, 36, 14, 46, 6, 38], [60, 28, 52, 20, 62, 30, 54, 22],
                   [3, 35, 11, 43, 1, 33, 9, 41], [51, 19, 59, 27, 49, 17, 57, 25],
                   [15, 47, 7, 39, 13, 45, 5, 37], [63, 31, 55, 23, 61, 29, 53, 21]])


@dataclass(frozen=True, eq=False)
class Mapping:
    """Where every pixel went, and the distinct (input color, palette index) pairs with their
    pixel counts (what the error measures need).

    Attributes
    ----------
    indices : ndarray of uint8, shape (n,)
        Palette index of every pixel, row by row.
    colors : ndarray of uint8, shape (m, C)
    labels : ndarray of uint8, shape (m,)
    counts : ndarray of int64, shape (m,)
    """

    indices: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    counts: np.ndarray


Mapper = Callable[["Prepared", Palette, QuantizeOptions, np.ndarray], Mapping]


def map_pixels(prepared: Prepared, palette: Palette, options: QuantizeOptions,
               labels: np.ndarray) -> Mapping:
    """Map every pixel of a prepared image to the palette by ``options.dither``.

    ``labels`` is the exactly nearest palette index of each distinct color of the image's
    histogram (the ``none`` mapping; the others take only the transparent pixels' from it).
    """
    return _MAPPERS[options.dither](prepared, palette, options, labels)


def _nearest_mapper(prepared: Prepared, palette: Palette, options: QuantizeOptions,
                    labels: np.ndarray) -> Mapping:
    """Every pixel through its distinct color's label (today's exact nearest mapping)."""
    hist = prepared.histogram
    indices = pixels.lookup(prepared.key_strips(), hist, labels, n_pixels=prepared.n_pixels)
    return Mapping(indices, hist.colors, np.asarray(labels, dtype=np.uint8), hist.counts)


@dataclass(frozen=True, eq=False)
class _Target:
    """The palette as the per-pixel loops see it: the entries visible pixels may take (in
    (R, G, B[, A]) order, for the tie rule), their search coordinates and candidate grid."""

    index: np.ndarray
    coords: np.ndarray
    lo: np.ndarray
    step: np.ndarray
    cells: int
    start: np.ndarray
    members: np.ndarray

    def to_palette(self, found: np.ndarray) -> np.ndarray:
        return self.index[found]


def _target(palette: Palette, options: QuantizeOptions) -> _Target:
    from . import ditherkernel

    colors = palette.colors
    allowed = np.arange(len(colors))
    if palette.has_alpha and (colors[:, 3] > 0).any():
        allowed = np.flatnonzero(colors[:, 3] > 0)
    allowed = allowed[np.lexsort(colors[allowed].T[::-1])]
    space = get_space(options.space)
    coords = np.ascontiguousarray(space.metric(colors[allowed]), dtype=np.float64)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    cells = GRID_CELLS[coords.shape[1]]
    step = np.maximum(hi - lo, 1e-12) / cells
    start, members = ditherkernel.candidate_grid(coords, lo, step, cells)
    return _Target(allowed, coords, lo, step, cells, start, members)


def _bands(prepared: Prepared, extra: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, rows, uint8 pixels (rows + up to ``extra``, W, C)) band by band."""
    image = prepared.image
    width, height = image.size
    channels = prepared.histogram.channels
    step = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, step):
        bottom = min(height, top + step)
        band = image.crop((0, top, width, min(height, bottom + extra)))
        keys = pixels.pixel_keys(band.tobytes("raw", "RGBX" if channels == 3 else "RGBA"))
        yield top, bottom - top, pixels.unpack(keys, channels).reshape(-1, width, channels)


def _finish(prepared: Prepared, bands: Iterator[tuple[np.ndarray, np.ndarray]]) -> Mapping:
    """Collect the bands' (pixels, indices) into one index array and the distinct pairs."""
    n = prepared.n_pixels
    channels = prepared.histogram.channels
    indices = np.empty(n, dtype=np.uint8)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    at = 0
    for band_pixels, band_indices in bands:
        flat = band_indices.reshape(-1)
        indices[at : at + len(flat)] = flat
        at += len(flat)
        keys = pixels.canonical(pixels.pack(band_pixels.reshape(-1, channels)), channels)
        pairs.append(np.unique(keys.astype(np.uint64) << np.uint64(8) | flat,
                               return_counts=True))
    merged = np.concatenate([p[0] for p in pairs])
    counts = np.concatenate([p[1] for p in pairs])
    distinct, inverse = np.unique(merged, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=counts, minlength=len(distinct))
    colors = pixels.unpack((distinct >> np.uint64(8)).astype(np.uint32), channels)
    return Mapping(indices, colors, (distinct & np.uint64(255)).astype(np.uint8),
                   summed.astype(np.int64))


def _transparent(prepared: Prepared, labels: np.ndarray) -> int | None:
    """The index fully transparent pixels take (their label), or None if there are none."""
    hist = prepared.histogram
    if hist.channels == 4 and len(hist) and hist.keys[0] == 0:
        return int(labels[0])
    return None


def _fs_mapper(prepared: Prepared, palette: Palette, options: QuantizeOptions,
               labels: np.ndarray) -> Mapping:
    """Floyd–Steinberg, serpentine, error diffused in the space's search coordinates."""
    from . import ditherkernel

    target = _target(palette, options)
    space = get_space(options.space)
    clear = _transparent(prepared, labels)
    width = prepared.image.size[0]
    carry = np.zeros((width, target.coords.shape[1]))
    edge = FS_EDGE * float(np.linalg.norm(target.coords.max(0) - target.coords.min(0)))

    def bands() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for top, rows, band in _bands(prepared, extra=1):
            channels = band.shape[2]
            coords = space.metric(band.reshape(-1, channels)).astype(np.float64)
            coords = coords.reshape(band.shape)
            skip = (band[:, :, 3] == 0) if channels == 4 else np.zeros(band.shape[:2], bool)
            found = np.zeros((rows, width), dtype=np.int64)
            ditherkernel.diffuse_band(coords, skip, rows, top, target.coords, target.lo,
                                      target.step, target.cells, target.start,
                                      target.members, target.coords.min(0),
                                      target.coords.max(0), float(options.dither_strength),
                                      edge, carry, found)
            out = target.to_palette(found).astype(np.uint8)
            if clear is not None:
                out[skip[:rows]] = clear
            yield band[:rows], out

    return _finish(prepared, bands())


def _threshold_mapper(matrix: Callable[[], np.ndarray]) -> Mapper:
    """An ordered mapper over a tiled threshold matrix of values t in [-0.5, 0.5)."""

    def mapper(prepared: Prepared, palette: Palette, options: QuantizeOptions,
               labels: np.ndarray) -> Mapping:
        from . import ditherkernel

        target = _target(palette, options)
        space = get_space(options.space)
        clear = _transparent(prepared, labels)
        width = prepared.image.size[0]
        offsets = matrix() * (float(options.dither_strength) * spread(palette))

        def bands() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for top, rows, band in _bands(prepared):
                size = offsets.shape[0]
                tile = np.take(np.take(offsets, np.arange(top, top + rows) % size, axis=0),
                               np.arange(width) % size, axis=1)
                wanted = band.astype(np.float64)
                wanted[:, :, :3] += tile[:, :, None]
                np.clip(wanted, 0.0, 255.0, out=wanted)
                channels = band.shape[2]
                points = np.ascontiguousarray(space.dither_coords(wanted.reshape(-1, channels)))
                found = np.empty(len(points), dtype=np.int64)
                ditherkernel.nearest_points(points, target.coords, target.lo, target.step,
                                            target.cells, target.start, target.members, found)
                out = target.to_palette(found).astype(np.uint8).reshape(rows, width)
                if clear is not None:
                    out[band[:, :, 3] == 0] = clear
                yield band, out

        return _finish(prepared, bands())

    return mapper


def spread(palette: Palette) -> float:
    """Median sRGB distance (0–255 units) from a visible palette color to its nearest other."""
    colors = palette.colors[:, :3].astype(np.float64)
    if palette.has_alpha and (palette.colors[:, 3] > 0).any():
        colors = colors[palette.colors[:, 3] > 0]
    if len(colors) < 2:
        return 0.0
    dist = np.sqrt(((colors[:, None, :] - colors[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(dist, np.inf)
    return float(np.median(dist.min(axis=1)))


def bayer8() -> np.ndarray:
    """The 8×8 Bayer matrix as thresholds (rank + 0.5) / 64 - 0.5."""
    return (BAYER8 + 0.5) / 64.0 - 0.5


@lru_cache(maxsize=1)
def blue_noise() -> np.ndarray:
    """The 64×64 void-and-cluster mask (``bluenoise64.npy``, made by
    ``tools/make_bluenoise.py``) as thresholds (rank + 0.5) / 4096 - 0.5."""
    ranks = np.load(Path(__file__).with_name("bluenoise64.npy"))
    return (ranks.astype(np.float64) + 0.5) / ranks.size - 0.5


_MAPPERS: dict[Dither, Mapper] = {
    Dither.NONE: _nearest_mapper,
    Dither.FS: _fs_mapper,
    Dither.ORDERED: _threshold_mapper(bayer8),
    Dither.BLUE_NOISE: _threshold_mapper(blue_noise),
}
