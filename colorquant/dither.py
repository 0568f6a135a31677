"""Pixels + palette → indices: the one mapping contract, with or without dithering.

:func:`map_pixels` is what the pipeline calls; a registry keyed by
:class:`~colorquant.options.Dither` picks the mapper. ``none`` maps each distinct color
through its exactly nearest palette index (a lookup, no per-pixel search); the dithering
mappers work on bands of rows, per pixel, in the color space's search coordinates:

- ``fs``: selective Floyd–Steinberg error diffusion, serpentine: pixels whose nearest color
  is all but exact take no error (:func:`fs_quiet`), large errors are damped
  (:data:`FS_DAMP`); see :func:`colorquant.ditherkernel.map_band` for the exact arithmetic
  and docs/transparency-and-dithering.md for the rule;
- ``ordered`` / ``blue-noise``: each pixel becomes the exactly nearest palette color of
  ``clip(pixel + t × strength × spread / 2, 0, 255)`` (``t`` in [-0.5, 0.5) from the threshold
  matrix at the pixel's position, added to R, G and B; ``spread`` the median distance from a
  palette color to its nearest other palette color, in sRGB 0–255 units).

Exact nearest means: float64 squared distance summed channel by channel (premultiplied by
alpha for RGBA: :class:`colorquant.colorspace.Premultiplied`), ties to the palette color that
sorts first by (R, G, B[, A]). Fully transparent pixels take the palette's
transparent entry and no part in the diffusion; visible pixels only visible entries.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import metrics, pixels
from .colorspace import get_space
from .options import ColorSpace, Dither, QuantizeOptions
from .palette import Palette

if TYPE_CHECKING:
    from .imagedata import Prepared

#: Pixels per band of the per-pixel mappers: bounds their float64 buffers (about 24 MB).
BAND_PIXELS = 1 << 20
#: Threads of the threshold mappers (whose pixels are independent): at most this many, and
#: one per this many pixels (a smaller image maps in a few milliseconds on one thread).
MAX_THREADS, MIN_THREAD_PIXELS = 4, 1 << 17
_thread_limit: int | None = None
#: Grid cells per channel of the candidate lists (3 and 4 channels; fewer for small palettes,
#: whose lists are short anyway).
GRID_CELLS = {3: 32, 4: 14}
SMALL_PALETTE, SMALL_GRID_CELLS = 32, {3: 16, 4: 8}
#: The threshold mappers of images of at least ``FINE_GRID_PIXELS`` use ``FINE_GRID_CELLS``
#: per channel for palettes without alpha of more than ``SMALL_PALETTE`` colors (in any
#: space): shorter lists where the pixels are (at k=256, 2.3 candidates a pixel against 4.0).
#: At 24 MP, k=256, one thread: ``ordered`` 13% and ``blue-noise`` 20% faster, for 28 ms of
#: grid instead of 7; ``fs`` was 8% slower with it, and keeps 32.
FINE_GRID_CELLS, FINE_GRID_PIXELS = 64, 1 << 22
#: ``fs`` limits diffusion at edges: no error goes to a neighbour whose pixel is farther from
#: this one than this share of the diagonal of the palette's box (search coordinates). With
#: the error kept and clamped as below, 0.1 is a middle way (benchmarks/dither_bench.py
#: --variants, k=16/64/256): plain diffusion gains 0.2–0.5 dB blurred PSNR and a little FLIP,
#: but loses 0.4 dB PSNR and 1–2% ΔE2000; 0.05 the reverse.
FS_EDGE = 0.1
#: ``fs`` keeps this share of each pixel's error (after libimagequant, "prevent small errors
#: from accumulating"), and clamps the wanted color to the box of the sRGB cube's corners
#: widened by ``FS_OVERFLOW`` of its size on each side (libimagequant allows 10% over- and
#: underflow, "prevents undithered bands caused by clamping"). Against the last release's
#: full error and clamp to the palette's box, both together gained blurred PSNR (+0.5 to
#: +1.0 dB), PSNR (+0.3 to +1.0 dB) and ΔE2000 at k=16/64/256, and FLIP at k=16 and 64
#: (equal at 256); the overflow alone gives 0.1-0.2 dB blurred PSNR for 0.03-0.09 dB PSNR.
FS_KEEP, FS_OVERFLOW = 15 / 16, 0.1
#: ``fs`` dithers selectively (after libimagequant, "don't dither areas that don't have
#: noticeable error — makes file smaller"): a pixel whose exactly nearest palette color is
#: within this squared error of it (squared 0–255 differences summed over the channels,
#: premultiplied with alpha; :func:`fs_quiet`) takes no diffused error.
FS_QUIET = 3
#: ``fs`` diffuses only 3/4 of an error whose squared length exceeds this many times the mean
#: squared error of the undithered mapping (:func:`undithered_mse`; libimagequant's "prevents
#: crazy green pixels popping out of the blue" uses the same factor): isolated large errors
#: make the speckles that cost bytes and are seen as noise.
FS_DAMP = 2.4
#: Threshold offsets of ``ordered``/``blue-noise`` span this many times the palette spread
#: (0.5 beat 0.75, 1 and 1.5 on every measure of the quality benchmark).
THRESHOLD_SCALE = 0.5

BAYER8 = np.array([[0, 32, 8, 40, 2, 34, 10, 42], [48, 16, 56, 24, 50, 18, 58, 26],
                   [12, 44, 4, 36, 14, 46, 6, 38], [60, 28, 52, 20, 62, 30, 54, 22],
                   [3, 35, 11, 43, 1, 33, 9, 41], [51, 19, 59, 27, 49, 17, 57, 25],
                   [15, 47, 7, 39, 13, 45, 5, 37], [63, 31, 55, 23, 61, 29, 53, 21]])


@dataclass(frozen=True, eq=False)
class Mapping:
    """Where every pixel went, and what the result reports of it.

    Attributes
    ----------
    indices : ndarray of uint8, shape (n,)
        Palette index of every pixel, row by row.
    entry_counts : ndarray of int64, shape (k,)
        Pixels of each palette entry.
    sse : int
        Sum of squared 0–255 channel differences between each pixel and its palette color
        (exact; fully transparent pixels count as transparent black).
    pairs : callable
        The distinct (input color, palette index) pairs and their pixel counts, as (colors
        uint8 (m, C), labels uint8 (m,), counts int64 (m,)): made when called, as only the
        mean ΔE2000 needs them (sorting them was a third of a dithered 24 MP mapping).
    """

    indices: np.ndarray
    entry_counts: np.ndarray
    sse: int
    pairs: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]


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
    indices = pixels.image_lookup(prepared.image, hist, labels, threads=map_threads())
    labels = np.asarray(labels, dtype=np.uint8)
    entry_counts = np.bincount(labels, weights=hist.counts, minlength=len(palette))
    return Mapping(indices, entry_counts.astype(np.int64),
                   metrics.weighted_sse(hist.colors, palette.colors[labels], hist.counts),
                   lambda: (hist.colors, labels, hist.counts))


@dataclass(frozen=True, eq=False)
class _Target:
    """The palette as the per-pixel loop sees it: the entries visible pixels may take (in
    (R, G, B[, A]) order, for the tie rule), their search coordinates, and the candidate grid
    over a box holding the palette and every color of the sRGB cube (and, for ``fs``, every
    color it may want)."""

    index: np.ndarray
    coords: np.ndarray
    lo: np.ndarray
    inv_step: np.ndarray
    cells: int
    start: np.ndarray
    members: np.ndarray


def _cube(channels: int) -> np.ndarray:
    """A lattice of the sRGB(A) cube (18 steps a channel), float 0–255, for the grid's box."""
    axis = np.linspace(0.0, 255.0, 18)
    grids = np.meshgrid(*([axis] * 3 + ([np.array([0.0, 255.0])] if channels == 4 else [])),
                        indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


@lru_cache(maxsize=8)
def _cube_box(space: ColorSpace, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel bounds of the cube's lattice (:func:`_cube`) in the search coordinates
    of ``space``: the same for every palette, so made once per process (encoding the lattice
    was most of a small frame's mapping: an animation maps each frame on its own)."""
    cube = get_space(space, channels).dither_coords(_cube(channels))
    lo, hi = cube.min(axis=0), cube.max(axis=0)
    lo.flags.writeable = hi.flags.writeable = False  # shared between calls
    return lo, hi


def _target(palette: Palette, options: QuantizeOptions,
            reach: tuple[np.ndarray, np.ndarray] | None = None, *, fine: bool = False,
            ) -> _Target:
    """The palette for the per-pixel loop; the grid also covers the box ``reach`` (the
    colors ``fs`` may want) when given, and has :data:`FINE_GRID_CELLS` where it applies when
    ``fine``. Made once per palette, space, box and grid, not per mapping: an animation's
    frames share one palette, and the grid takes 7 ms at k=256 (it took 50-75 ms when it was
    built from every color), more than mapping a small frame."""
    colors = palette.colors
    box = None if reach is None else (tuple(reach[0].tolist()), tuple(reach[1].tolist()))
    return _target_of(colors.tobytes(), colors.shape, options.space, box, fine)


@lru_cache(maxsize=4)
def _target_of(data: bytes, shape: tuple[int, int], space: ColorSpace,
               reach: tuple[tuple[float, ...], tuple[float, ...]] | None,
               fine: bool = False) -> _Target:
    """:func:`_target` of the uint8 palette colors ``data`` of ``shape`` (a cache entry,
    shared by the mappings that follow: the loops only read it; its arrays stay writeable,
    as numba compiles read-only arrays as other types)."""
    from . import ditherkernel

    colors = np.frombuffer(data, dtype=np.uint8).reshape(shape)
    allowed = np.arange(len(colors))
    if shape[1] == 4 and (colors[:, 3] > 0).any():
        allowed = np.flatnonzero(colors[:, 3] > 0)
    allowed = allowed[np.lexsort(colors[allowed].T[::-1])]
    coords = np.ascontiguousarray(get_space(space, shape[1]).metric(colors[allowed]),
                                  dtype=np.float64)
    cube_lo, cube_hi = _cube_box(space, shape[1])
    lo = np.minimum(coords.min(axis=0), cube_lo)
    hi = np.maximum(coords.max(axis=0), cube_hi)
    if reach is not None:
        lo, hi = np.minimum(lo, np.array(reach[0])), np.maximum(hi, np.array(reach[1]))
    pad = 0.01 * (hi - lo) + 1e-9  # lattice extremes sit a little inside the cube's
    lo, hi = lo - pad, hi + pad
    cells = (SMALL_GRID_CELLS if len(coords) <= SMALL_PALETTE else GRID_CELLS)[coords.shape[1]]
    if fine and len(coords) > SMALL_PALETTE and coords.shape[1] == 3:
        cells = FINE_GRID_CELLS
    step = (hi - lo) / cells
    start, members = ditherkernel.candidate_grid(coords, lo, step, cells)
    return _Target(allowed, coords, lo, 1.0 / step, cells, start, members)


def fs_box(space: ColorSpace, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel bounds of ``fs``'s wanted color: the box of the sRGB(A) cube's
    corners in the search coordinates of ``space``, widened by :data:`FS_OVERFLOW` of its size
    on each side (in ``rgb``, -25.5 to 280.5)."""
    corners = np.array(list(itertools.product((0.0, 255.0), repeat=channels)))
    coords = get_space(space, channels).dither_coords(corners)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    margin = FS_OVERFLOW * (hi - lo)
    return lo - margin, hi + margin


def limit_threads(count: int | None) -> None:
    """Cap the mapping threads of this process, which the fit's compiled passes also use
    (``None``: the CPUs it may use, up to :data:`MAX_THREADS`). The batch and Dask workers set
    1: they run files side by side."""
    global _thread_limit
    _thread_limit = count


def map_threads() -> int:
    """The threads a threshold mapping (or the fit's compiled passes) may use in this
    process."""
    if _thread_limit is not None:
        return max(1, _thread_limit)
    from .memory import available_cpus

    return max(1, min(MAX_THREADS, available_cpus()))


def _rows(prepared: Prepared, band_pixels: int = BAND_PIXELS) -> list[tuple[int, int]]:
    """(first row, rows) of each band of at most about ``band_pixels`` pixels."""
    width, height = prepared.image.size
    step = pixels.band_rows(width, band_pixels)
    return [(top, min(height, top + step) - top) for top in range(0, height, step)]


def _keys(prepared: Prepared, top: int, rows: int, extra: int = 0) -> np.ndarray:
    """The raw uint32 keys of ``rows`` rows from ``top`` and up to ``extra`` more; the keys'
    bytes are R, G, B, A (or padding) per pixel (:func:`_pixels` unpacks them)."""
    image = prepared.image
    width, height = image.size
    band = image.crop((0, top, width, min(height, top + rows + extra)))
    return pixels.pixel_keys(
        band.tobytes("raw", "RGBX" if prepared.histogram.channels == 3 else "RGBA"))


def _bands(prepared: Prepared, extra: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, rows, raw keys of rows + up to ``extra``) band by band."""
    for top, rows in _rows(prepared):
        yield top, rows, _keys(prepared, top, rows, extra)


def _pixels(keys: np.ndarray, width: int, channels: int) -> np.ndarray:
    """A band's raw keys as uint8 pixels (h, W, C)."""
    return pixels.unpack(keys, channels).reshape(-1, width, channels)


def _map(prepared: Prepared, palette: Palette, options: QuantizeOptions, labels: np.ndarray,
         points: Callable[[int, np.ndarray], np.ndarray] | None, *, diffuse: bool,
         offsets: np.ndarray | None = None) -> Mapping:
    """Run the per-pixel loop band by band over ``points(first_row, band)`` (the search
    coordinates of a band, float64 (h, W, C)), or, without ``points`` (sRGB search
    coordinates), over the uint8 band itself, adding threshold ``offsets`` when given; the
    loops write the indices and sum what the result reports."""
    from . import ditherkernel

    channels = prepared.histogram.channels
    box = fs_box(options.space, channels) if diffuse else None
    target = _target(palette, options, box,
                     fine=not diffuse and prepared.n_pixels >= FINE_GRID_PIXELS)
    clear = _transparent(prepared, labels)
    width = prepared.image.size[0]
    if box is not None:
        box_lo, box_hi = box
        edge = FS_EDGE * _length(target.coords.max(axis=0) - target.coords.min(axis=0))
        strength = float(options.dither_strength) * FS_KEEP
        damp = FS_DAMP * undithered_mse(prepared, palette, labels, options)
    else:
        box_lo, box_hi = np.full(channels, -np.inf), np.full(channels, np.inf)
        edge, strength, damp = 0.0, 0.0, np.inf
    n = prepared.n_pixels
    quiet = (fs_quiet(prepared, palette, labels) if diffuse
             else np.zeros((1, 1), dtype=np.uint8))
    indices = np.empty(n, dtype=np.uint8)
    entry_counts = np.zeros(len(palette), dtype=np.int64)
    entries = palette.colors.astype(np.int64)
    clear_index = -1 if clear is None else clear
    dims = (0,) * channels  # the channel count as a type: the loops unroll their channels

    def band_sse(top: int, rows: int, counts: np.ndarray, carry: np.ndarray) -> int:
        """Map one band into ``indices``, adding to ``counts`` (and ``carry``, diffusing)."""
        raw = _keys(prepared, top, rows, extra=1 if diffuse else 0)
        band = raw.view(np.uint8).reshape(-1, width, 4)
        out = indices[top * width : (top + rows) * width].reshape(rows, width)
        if offsets is not None:
            return int(ditherkernel.threshold_band(
                band, dims, rows, top, offsets, target.coords, target.lo,
                target.inv_step, target.cells, target.start, target.members, target.index,
                entries, clear_index, counts, out))
        coords = band if points is None else np.ascontiguousarray(
            points(top, _pixels(raw, width, channels)))
        return int(ditherkernel.map_band(
            band, coords, dims, rows, top, target.coords, target.lo, target.inv_step,
            target.cells, target.start, target.members, target.index, entries, clear_index,
            box_lo, box_hi, strength, edge, diffuse, carry, counts, out,
            quiet[top : top + rows] if diffuse else quiet, damp))

    threads = 1 if diffuse else min(map_threads(), -(-n // MIN_THREAD_PIXELS))
    if threads <= 1:  # in order: the error diffused into a band comes from the one above
        carry = np.zeros((width, channels))
        sse = sum(band_sse(top, rows, entry_counts, carry) for top, rows in _rows(prepared))
    else:  # independent pixels: bands side by side, each with its own counts
        from concurrent.futures import ThreadPoolExecutor

        bands = _rows(prepared, min(BAND_PIXELS, -(-n // (4 * threads))))
        still = np.zeros((width, channels))  # no error to carry: read, never written
        counts = np.zeros((len(bands), len(palette)), dtype=np.int64)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            sse = sum(pool.map(lambda i: band_sse(*bands[i], counts[i], still),
                               range(len(bands))))
        entry_counts += counts.sum(axis=0)
    return Mapping(indices, entry_counts, sse, lambda: _pairs(prepared, indices))


def fs_quiet(prepared: Prepared, palette: Palette, labels: np.ndarray) -> np.ndarray:
    """Which pixels ``fs`` leaves undithered (uint8 (H, W), 1 or 0): those whose exactly nearest
    palette color (``labels``, the undithered mapping) is within :data:`FS_QUIET` of them
    (:func:`undithered_error`). Fully transparent pixels are 1 and take no part anyway."""
    hist = prepared.histogram
    width, height = prepared.image.size
    quiet = undithered_error(hist.colors, palette.colors[labels]) <= FS_QUIET * 255**2
    return pixels.image_lookup(prepared.image, hist, quiet.astype(np.uint8),
                               threads=map_threads()).reshape(height, width)


def undithered_mse(prepared: Prepared, palette: Palette, labels: np.ndarray,
                   options: QuantizeOptions) -> float:
    """Mean squared distance (search coordinates) from a visible pixel to its exactly nearest
    palette color, the scale of :data:`FS_DAMP`: ``fsum(count × d) / pixels`` over the
    distinct visible colors (``d`` summed channel by channel in float64; ``math.fsum`` is
    exactly rounded, so no summation order or machine changes it)."""
    hist = prepared.histogram
    colors, counts, chosen = hist.colors, hist.counts, palette.colors[labels]
    if hist.channels == 4:
        shown = colors[:, 3] > 0
        colors, counts, chosen = colors[shown], counts[shown], chosen[shown]
    if not len(colors):
        return 0.0
    space = get_space(options.space, hist.channels)
    a = np.asarray(space.metric(colors), dtype=np.float64)
    b = np.asarray(space.metric(chosen), dtype=np.float64)
    dist = np.zeros(len(a))
    for c in range(a.shape[1]):
        dist += (a[:, c] - b[:, c]) ** 2
    return math.fsum((counts.astype(np.float64) * dist).tolist()) / int(counts.sum())


def undithered_error(colors: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Squared error of each color against its chosen palette color, int64 and exact, on the
    scale of 255² × squared 0–255 units: ``255² × Σ (c − p)²`` over R, G, B without alpha;
    with alpha, premultiplied: ``Σ (c·A − p·A')² + 255² (A − A')²``."""
    colors = colors.astype(np.int64)
    chosen = chosen.astype(np.int64)
    if colors.shape[1] == 4:
        diff = colors[:, :3] * colors[:, 3:] - chosen[:, :3] * chosen[:, 3:]
        return (diff * diff).sum(axis=1) + (255 * (colors[:, 3] - chosen[:, 3])) ** 2
    diff = colors - chosen
    return (diff * diff).sum(axis=1) * 255**2


def _pairs(prepared: Prepared, indices: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (canonical input color, palette index) pairs of a mapping and their
    pixel counts, band by band (see :attr:`Mapping.pairs`)."""
    channels = prepared.histogram.channels
    found: list[tuple[np.ndarray, np.ndarray]] = []
    at = 0
    for _, _, raw in _bands(prepared):
        keys = pixels.canonical(raw, channels)
        flat = indices[at : at + len(keys)]
        at += len(keys)
        found.append(np.unique(keys.astype(np.uint64) << np.uint64(8) | flat,
                               return_counts=True))
    distinct, inverse = np.unique(np.concatenate([p[0] for p in found]), return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=np.concatenate([p[1] for p in found]),
                         minlength=len(distinct))
    colors = pixels.unpack((distinct >> np.uint64(8)).astype(np.uint32), channels)
    return colors, (distinct & np.uint64(255)).astype(np.uint8), summed.astype(np.int64)


def _length(vector: np.ndarray) -> float:
    """Euclidean length, summed in order in Python floats (the documented arithmetic)."""
    total = 0.0
    for value in vector.tolist():
        total += value * value
    return math.sqrt(total)


def _transparent(prepared: Prepared, labels: np.ndarray) -> int | None:
    """The index fully transparent pixels take (their label), or None if there are none."""
    hist = prepared.histogram
    if hist.channels == 4 and len(hist) and hist.keys[0] == 0:
        return int(labels[0])
    return None


def _fs_mapper(prepared: Prepared, palette: Palette, options: QuantizeOptions,
               labels: np.ndarray) -> Mapping:
    """Floyd–Steinberg, serpentine, error diffused in the space's search coordinates."""
    space = get_space(options.space, prepared.histogram.channels)

    def points(top: int, band: np.ndarray) -> np.ndarray:
        return space.dither_coords(band.reshape(-1, band.shape[2])).reshape(band.shape)

    # sRGB search coordinates: the loop reads the uint8 band itself (no float64 band)
    return _map(prepared, palette, options, labels, None if space.srgb_search else points,
                diffuse=True)


def _threshold_mapper(matrix: Callable[[], np.ndarray]) -> Mapper:
    """An ordered mapper over a tiled threshold matrix of values t in [-0.5, 0.5)."""

    def mapper(prepared: Prepared, palette: Palette, options: QuantizeOptions,
               labels: np.ndarray) -> Mapping:
        space = get_space(options.space, prepared.histogram.channels)
        offsets = matrix() * (THRESHOLD_SCALE * float(options.dither_strength)
                              * spread(palette))
        size = offsets.shape[0]
        width = prepared.image.size[0]
        columns = np.arange(width) % size

        def points(top: int, band: np.ndarray) -> np.ndarray:
            rows = np.arange(top, top + band.shape[0]) % size
            wanted = band.astype(np.float64)
            wanted[:, :, :3] += offsets[rows][:, columns][:, :, None]
            np.clip(wanted, 0.0, 255.0, out=wanted)
            flat = wanted.reshape(-1, band.shape[2])
            return space.dither_coords(flat).reshape(band.shape)

        if space.srgb_search:  # the same values, added inside the loop (no float64 band)
            return _map(prepared, palette, options, labels, None, diffuse=False,
                        offsets=np.ascontiguousarray(offsets))
        return _map(prepared, palette, options, labels, points, diffuse=False)

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
