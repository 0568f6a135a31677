"""Dithering and color spaces: each exactness promise checked against a plain Python loop."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_image, run
from PIL import Image

from colorquant import core, dither, metrics
from colorquant.colorspace import cielab_to_srgb, get_space, srgb_to_cielab
from colorquant.options import ColorSpace, Dither, QuantizeOptions
from colorquant.palette import Palette


def _gradient(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth two-way gradient with mild noise: the case dithering is for."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1),
                    (x + y) * 127 / max(h + w - 2, 1)], axis=2)
    rgb += np.random.default_rng(seed).normal(0, 4, rgb.shape)
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if channels == 4:
        alpha = np.full((h, w, 1), 255, np.uint8)
        out = np.concatenate([out, alpha], axis=2)
    return out


def _allowed(palette: np.ndarray) -> list[int]:
    """Palette entries a visible pixel may take, in the tie order (sorted by value)."""
    idx = list(range(len(palette)))
    if palette.shape[1] == 4 and (palette[:, 3] > 0).any():
        idx = [i for i in idx if palette[i, 3] > 0]
    return sorted(idx, key=lambda i: tuple(int(v) for v in palette[i]))


def _brute_nearest(point: list[float], centers: list[list[float]]) -> int:
    """First minimum of the float64 squared distance, channels summed in order."""
    best, best_d = -1, float("inf")
    for j, center in enumerate(centers):
        d = 0.0
        for p, c in zip(point, center, strict=True):
            d += (p - c) * (p - c)
        if d < best_d:
            best, best_d = j, d
    return best


def search_point(color: list[float], space: ColorSpace) -> list[float]:
    """The search coordinates of one sRGB(A) color (0–255 values) as docs/
    transparency-and-dithering.md defines them: the space's coordinates of R, G, B (in ``rgb``
    the values themselves); with alpha A, premultiplied: those times A, and ``unit × A`` (unit
    255 in ``rgb``, 1 in ``oklab`` and ``lab``)."""
    base = get_space(space)
    rgb = [float(v) for v in color[:3]]
    point = rgb if space is ColorSpace.RGB else base.dither_coords(np.array([rgb]))[0].tolist()
    if len(color) == 3:
        return point
    alpha = float(color[3])
    unit = 255.0 if space is ColorSpace.RGB else 1.0
    return [v * alpha for v in point] + [unit * alpha]


def undithered_error(color: list[int], entry: list[int]) -> int:
    """255² × the squared 0–255 error of a color against a palette entry, premultiplied when
    there is alpha (plain integers)."""
    if len(color) == 3:
        return 255 * 255 * sum((a - b) * (a - b) for a, b in zip(color, entry, strict=True))
    total = 255 * 255 * (color[3] - entry[3]) ** 2
    for c in range(3):
        total += (color[c] * color[3] - entry[c] * entry[3]) ** 2
    return total


def reference_nearest(image: np.ndarray, palette: np.ndarray, space: ColorSpace) -> np.ndarray:
    """The undithered mapping, one pixel at a time: alpha 0 to the first transparent entry,
    others to the first (in value order) of the visible entries nearest in search
    coordinates."""
    h, w, channels = image.shape
    allowed = _allowed(palette)
    centers = [search_point(palette[i].tolist(), space) for i in allowed]
    clear = [i for i in range(len(palette)) if channels == 4 and palette[i, 3] == 0]
    out = np.zeros((h, w), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            if channels == 4 and image[y, x, 3] == 0 and clear:
                out[y, x] = clear[0]
            else:
                out[y, x] = allowed[_brute_nearest(search_point(image[y, x].tolist(), space),
                                                   centers)]
    return out


def reference_quiet(image: np.ndarray, palette: np.ndarray, space: ColorSpace) -> list:
    """Whether each pixel is left undithered by ``fs``: its undithered error is at most
    FS_QUIET (docs: selective dithering)."""
    h, w, _ = image.shape
    near = reference_nearest(image, palette, space)
    return [[undithered_error(image[y, x].tolist(), palette[near[y, x]].tolist())
             <= dither.FS_QUIET * 255 * 255 for x in range(w)] for y in range(h)]


def reference_mse(image: np.ndarray, palette: np.ndarray, space: ColorSpace) -> float:
    """The undithered mapping's mean squared distance (search coordinates) over the visible
    pixels: each distinct color's count × distance, summed exactly (math.fsum)."""
    near = reference_nearest(image, palette, space)
    found: dict[tuple[int, ...], list[int]] = {}
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            color = tuple(int(v) for v in image[y, x])
            if len(color) == 4 and color[3] == 0:
                continue
            found.setdefault(color, [0, int(near[y, x])])[0] += 1
    terms, total = [], 0
    for color, (count, index) in found.items():
        a, b = search_point(list(color), space), search_point(palette[index].tolist(), space)
        d = 0.0
        for c in range(len(a)):
            d += (a[c] - b[c]) ** 2
        terms.append(count * d)
        total += count
    return math.fsum(terms) / total if total else 0.0


def reference_fs(image: np.ndarray, palette: np.ndarray, strength: float,
                 space: ColorSpace = ColorSpace.RGB) -> np.ndarray:
    """Floyd–Steinberg as docs/transparency-and-dithering.md and dither.py document it, one
    pixel at a time."""
    h, w, channels = image.shape
    allowed = _allowed(palette)
    centers = [search_point(palette[i].tolist(), space) for i in allowed]
    quiet = reference_quiet(image, palette, space)
    damp = dither.FS_DAMP * reference_mse(image, palette, space)
    lo = [min(c[i] for c in centers) for i in range(channels)]
    hi = [max(c[i] for c in centers) for i in range(channels)]
    corners = [search_point(list(corner), space)
               for corner in itertools.product([0.0, 255.0], repeat=channels)]
    clamp_lo, clamp_hi = [], []  # the cube corners' box, widened by FS_OVERFLOW a side
    for c in range(channels):
        low, high = min(p[c] for p in corners), max(p[c] for p in corners)
        clamp_lo.append(low - dither.FS_OVERFLOW * (high - low))
        clamp_hi.append(high + dither.FS_OVERFLOW * (high - low))
    keep = strength * dither.FS_KEEP
    coords = [[search_point(image[y, x].tolist(), space) for x in range(w)] for y in range(h)]
    span = 0.0
    for a, b in zip(lo, hi, strict=True):
        span += (b - a) * (b - a)
    edge = dither.FS_EDGE * math.sqrt(span)

    def near(y0: int, x0: int, y1: int, x1: int) -> bool:
        d = 0.0
        for a, b in zip(coords[y0][x0], coords[y1][x1], strict=True):
            d += (a - b) * (a - b)
        return edge <= 0 or d <= edge * edge

    skip = [[channels == 4 and int(image[y, x, 3]) == 0 for x in range(w)] for y in range(h)]
    clear = [i for i in range(len(palette)) if palette.shape[1] == 4 and palette[i, 3] == 0]
    out = np.zeros((h, w), dtype=np.uint8)
    error = [[[0.0] * channels for _ in range(w)] for _ in range(h + 1)]
    for y in range(h):
        xs = range(w) if y % 2 == 0 else range(w - 1, -1, -1)
        d = 1 if y % 2 == 0 else -1
        for x in xs:
            if skip[y][x]:
                out[y, x] = clear[0]
                continue
            want = [min(max(coords[y][x][c] + (0.0 if quiet[y][x] else error[y][x][c]),
                            clamp_lo[c]), clamp_hi[c]) for c in range(channels)]
            j = _brute_nearest(want, centers)
            out[y, x] = allowed[j]
            big = 0.0
            for c in range(channels):
                big += (want[c] - centers[j][c]) * (want[c] - centers[j][c])
            scale = keep * 0.75 if big > damp else keep
            err = [(want[c] - centers[j][c]) * scale for c in range(channels)]
            for yy, xx, weight in ((y, x + d, 7), (y + 1, x - d, 3), (y + 1, x, 5),
                                   (y + 1, x + d, 1)):
                if yy < h and 0 <= xx < w and not skip[yy][xx] and near(y, x, yy, xx):
                    for c in range(channels):
                        error[yy][xx][c] += err[c] * weight / 16
    return out


def _indices(result: core.QuantizeResult) -> np.ndarray:
    return np.asarray(result.image)


def _fixed_palette(k: int, channels: int, seed: int) -> Palette:
    colors = random_image(1, k, seed, channels)[0]
    if channels == 4:
        colors[:, 3] = np.maximum(colors[:, 3], 1)
        colors[0] = (0, 0, 0, 0)
    return Palette(np.unique(colors, axis=0)[::-1].copy(), np.ones(len(np.unique(colors, axis=0)),
                                                                   dtype=np.int64))


@pytest.mark.parametrize(("space", "strength", "k"), [
    (ColorSpace.RGB, 1.0, 6), (ColorSpace.RGB, 0.6, 16), (ColorSpace.OKLAB, 1.0, 8),
    (ColorSpace.LAB, 1.0, 8)])
def test_fs_is_the_reference_loop(space, strength, k):
    image = _gradient(23, 37, seed=k)
    opts = QuantizeOptions(colors=k, dither=Dither.FS, dither_strength=strength, space=space)
    result = core.quantize(image, opts)
    np.testing.assert_array_equal(
        _indices(result), reference_fs(image, result.palette.colors, strength, space))


@pytest.mark.parametrize("edge", [0.0, 0.3])
def test_fs_edge_limit_is_the_reference_loop(monkeypatch, edge):
    """Without the edge limit, and with a strong one (a sharp-edged image)."""
    monkeypatch.setattr(dither, "FS_EDGE", edge)
    image = _gradient(21, 25, seed=8)
    image[:, 12:] = 255 - image[:, 12:]
    result = core.quantize(image, QuantizeOptions(colors=6, dither=Dither.FS))
    np.testing.assert_array_equal(_indices(result),
                                  reference_fs(image, result.palette.colors, 1.0))


def test_fs_across_bands_and_with_a_given_palette(monkeypatch):
    """Bands of 3 rows (the error row carried between them) change nothing."""
    monkeypatch.setattr(dither, "BAND_PIXELS", 3 * 29)
    image = random_image(17, 29, seed=5)
    palette = _fixed_palette(12, 3, seed=9)
    result = core.quantize(image, QuantizeOptions(dither=Dither.FS), palette=palette)
    np.testing.assert_array_equal(_indices(result), reference_fs(image, palette.colors, 1.0))
    np.testing.assert_array_equal(result.palette.colors, palette.colors)  # kept as given


def test_fs_transparency():
    """Fully transparent pixels stay transparent and take no part; no visible pixel is lost."""
    image = _gradient(19, 21, channels=4, seed=3)
    rng = np.random.default_rng(0)
    image[rng.random((19, 21)) < 0.3, 3] = 0
    image[rng.random((19, 21)) < 0.2, 3] = 128
    opts = QuantizeOptions(colors=8, dither=Dither.FS)
    result = core.quantize(image, opts)
    palette = result.palette.colors
    out = _indices(result)
    np.testing.assert_array_equal(out, reference_fs(image, palette, 1.0))
    np.testing.assert_array_equal(palette[out][:, :, 3] == 0, image[:, :, 3] == 0)


def _threads(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """Let the threshold mappers run ``threads`` threads on any image (of at least 1 pixel
    a thread)."""
    monkeypatch.setattr(dither, "MIN_THREAD_PIXELS", 1)
    monkeypatch.setattr(dither, "_thread_limit", threads)


def _reference_threshold(image: np.ndarray, palette: np.ndarray, matrix: np.ndarray,
                         strength: float, space: ColorSpace) -> np.ndarray:
    """Each pixel: the exactly nearest palette color of clip(pixel + t × strength × spread)."""
    h, w, channels = image.shape
    allowed = _allowed(palette)
    centers = [search_point(palette[i].tolist(), space) for i in allowed]
    amount = dither.THRESHOLD_SCALE * strength * dither.spread(
        Palette(palette, np.ones(len(palette), np.int64)))
    out = np.zeros((h, w), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            if channels == 4 and image[y, x, 3] == 0:
                out[y, x] = int(np.flatnonzero(palette[:, 3] == 0)[0])
                continue
            t = matrix[y % len(matrix), x % len(matrix)]
            want = [min(max(float(v) + (t * amount if c < 3 else 0.0), 0.0), 255.0)
                    for c, v in enumerate(image[y, x])]
            out[y, x] = allowed[_brute_nearest(search_point(want, space), centers)]
    return out


@pytest.mark.parametrize(("method", "matrix"), [(Dither.ORDERED, dither.bayer8),
                                                 (Dither.BLUE_NOISE, dither.blue_noise)])
@pytest.mark.parametrize(("space", "channels"), [(ColorSpace.RGB, 3), (ColorSpace.RGB, 4),
                                                  (ColorSpace.OKLAB, 3), (ColorSpace.LAB, 4)])
@pytest.mark.parametrize(("band_rows", "threads"), [(None, 1), (3, 1), (None, 3)])
def test_threshold_methods_are_the_exact_nearest(monkeypatch, method, matrix, space, channels,
                                                 band_rows, threads):
    if band_rows:  # bands that start mid-mask
        monkeypatch.setattr(dither, "BAND_PIXELS", 70 * band_rows)
    _threads(monkeypatch, threads)  # 3: bands of one row, side by side
    image = _gradient(20, 70, channels=channels, seed=2)  # wider than the 64-pixel mask
    if channels == 4:
        image[::3, ::4, 3] = 0
    opts = QuantizeOptions(colors=10, dither=method, dither_strength=0.8, space=space)
    result = core.quantize(image, opts)
    np.testing.assert_array_equal(
        _indices(result),
        _reference_threshold(image, result.palette.colors, matrix(), 0.8, space))


@pytest.mark.parametrize(("method", "matrix"), [(Dither.ORDERED, dither.bayer8),
                                                 (Dither.BLUE_NOISE, dither.blue_noise)])
@pytest.mark.parametrize("space", [ColorSpace.RGB, ColorSpace.OKLAB])
def test_threshold_methods_on_the_large_image_grid_are_the_exact_nearest(monkeypatch, method,
                                                                         matrix, space):
    """Large images take the finer grid (here every image does): still the brute-force
    result, and the mapping did use that grid (asking for it again is a cache hit)."""
    monkeypatch.setattr(dither, "FINE_GRID_PIXELS", 1)
    image = _gradient(20, 70, seed=5)
    opts = QuantizeOptions(colors=48, dither=method, space=space)  # above SMALL_PALETTE
    dither._target_of.cache_clear()
    result = core.quantize(image, opts)
    np.testing.assert_array_equal(
        _indices(result), _reference_threshold(image, result.palette.colors, matrix(), 1.0, space))
    hits = dither._target_of.cache_info().hits
    assert dither._target(result.palette, opts, fine=True).cells == dither.FINE_GRID_CELLS
    assert dither._target_of.cache_info().hits == hits + 1


@pytest.mark.parametrize("cells", [6, 20])
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize(("k", "box"), [(1, 255), (2, 255), (7, 30), (40, 255), (256, 255),
                                        (256, 60)])
def test_grid_search_is_the_brute_force_nearest(k, box, channels, cells):
    """The candidate lists (bound and dominance pruning) never lose the nearest color: the
    grid search equals a plain loop over the palette (first of equals) on random points, on
    whole numbers (many exact ties: palettes of whole numbers in a small box hold equidistant
    colors), on the cells' corners and outside the grid. 6 cells are built from every color;
    20 from the lists of 10, built from those of 5 (coarse to fine)."""
    from colorquant import ditherkernel

    rng = np.random.default_rng(k * 10 + channels)
    palette = rng.integers(0, box + 1, (k, channels)).astype(np.float64)
    if k > 2:
        palette[1] = palette[0]  # a duplicate color
    lo = np.full(channels, -3.0)
    step = np.full(channels, (258.0 - lo[0]) / cells)
    start, members = ditherkernel.candidate_grid(palette, lo, step, cells)
    corners = lo + step * rng.integers(0, cells + 1, (300, channels))
    points = np.concatenate([rng.uniform(-10, 265, (1500, channels)),
                             rng.integers(0, box + 1, (1500, channels)).astype(np.float64),
                             corners, corners + 1e-12, corners - 1e-12])
    centers = palette.tolist()
    for point in points:
        found = ditherkernel._nearest(point, palette, lo, 1.0 / step, cells, start, members,
                                      channels)
        assert found == _brute_nearest(point.tolist(), centers), point


def test_the_grid_is_made_once_per_palette_and_space_and_never_reused_for_another():
    """Mappings with palettes that differ in one color, in other spaces, with and without
    ``fs``'s wider box, in turn in one process: each is still the brute-force result (no grid
    made for one is used for another). An animation's frames share one grid."""
    image = _gradient(12, 16, seed=4)
    first = _fixed_palette(6, 3, seed=1)
    colors = first.colors.copy()
    colors[2] = (colors[2].astype(int) + 40) % 256
    second = Palette(colors, first.counts)
    dither._target_of.cache_clear()
    for palette, space in ((first, ColorSpace.RGB), (second, ColorSpace.RGB),
                           (first, ColorSpace.OKLAB), (first, ColorSpace.RGB)):
        for method, matrix in ((Dither.ORDERED, dither.bayer8), (Dither.FS, None)):
            result = core.quantize(image, QuantizeOptions(dither=method, space=space),
                                       palette=palette)
            expected = (reference_fs(image, palette.colors, 1.0, space) if matrix is None
                        else _reference_threshold(image, palette.colors, matrix(), 1.0, space))
            np.testing.assert_array_equal(_indices(result), expected)
    frames = [Image.fromarray(np.roll(image, i, axis=1)) for i in range(10)]
    dither._target_of.cache_clear()
    core.quantize_frames(frames, QuantizeOptions(colors=8, dither=Dither.BLUE_NOISE))
    assert dither._target_of.cache_info()[:2] == (9, 1)  # hits, misses


def test_ties_go_to_the_color_that_sorts_first():
    """Gray 100 is exactly between 90 and 110: the darker (first by value) wins, whatever
    the palette order, for every method at strength 0."""
    image = np.full((4, 5, 3), 100, dtype=np.uint8)
    for order in ([[110] * 3, [90] * 3], [[90] * 3, [110] * 3]):
        palette = Palette(np.array(order, dtype=np.uint8), np.ones(2, np.int64))
        want = order.index([90] * 3)
        for method in Dither:
            opts = QuantizeOptions(dither=method, dither_strength=0.0)
            out = _indices(core.quantize(image, opts, palette=palette))
            assert (out == want).all(), method


def test_blue_noise_mask_holds_every_rank_once():
    ranks = np.load(Path(dither.__file__).with_name("bluenoise64.npy"))
    assert ranks.shape == (64, 64)
    assert sorted(ranks.ravel().tolist()) == list(range(4096))
    # blue noise: a 50% threshold of it has far less low-frequency power than white noise
    half = (ranks < 2048).astype(float) - 0.5
    power = np.abs(np.fft.fft2(half)) ** 2
    assert power[:4, :4].sum() - power[0, 0] < 0.1 * power.mean() * 15


def test_threshold_methods_are_stable_across_frames():
    """An unchanged region maps to the same indices in every frame of an animation."""
    first = _gradient(24, 32, seed=1)
    second = first.copy()
    second[:8, :8] = (255, 0, 0)
    frames = [Image.fromarray(first), Image.fromarray(second)]
    for method in (Dither.ORDERED, Dither.BLUE_NOISE):
        results, _, _ = core.quantize_frames(frames, QuantizeOptions(colors=8, dither=method))
        a, b = (_indices(r) for r in results)
        same = (first == second).all(axis=2)
        np.testing.assert_array_equal(a[same], b[same])


def test_mapping_threads_follow_the_cpus_and_the_pool_limit():
    """A single call may use the CPUs it is given (up to MAX_THREADS); a pool process, which
    runs beside the others, one thread."""
    code = ("import os; from colorquant import dither, executors; os.sched_setaffinity(0, {0}); "
            "a = dither.map_threads(); os.sched_setaffinity(0, set(range(os.cpu_count()))); "
            "b = dither.map_threads(); executors._init_pool_process(); "
            "print(a, b, dither.map_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    cpus = len(os.sched_getaffinity(0))
    assert out.stdout.split() == ["1", str(min(dither.MAX_THREADS, cpus)), "1"]


def test_warm_compiles_every_loop_the_mappers_call():
    """After ``ditherkernel.warm`` (what the warm worker runs before it serves), no mapping
    compiles anything new: every method, both spaces, RGB and RGBA, in and out of threads."""
    code = """
import numpy as np
from colorquant import dither, ditherkernel, core
from colorquant.options import ColorSpace, Dither, QuantizeOptions
ditherkernel.warm()
loops = (ditherkernel.candidate_grid, ditherkernel.map_band, ditherkernel.threshold_band)
before = [list(loop.signatures) for loop in loops]
rng = np.random.default_rng(0)
for channels in (3, 4):
    image = rng.integers(0, 256, (40, 50, channels), dtype=np.uint8)
    if channels == 4:
        image[::2, ::3, 3] = 0
    for method in (Dither.FS, Dither.ORDERED, Dither.BLUE_NOISE):
        for space in ColorSpace:
            for threads in (1, 2):
                dither.MIN_THREAD_PIXELS, dither._thread_limit = 1, threads
                core.quantize(image, QuantizeOptions(colors=6, dither=method, space=space))
print([list(loop.signatures) for loop in loops] == before, [len(b) for b in before])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split()[0] == "True", out.stdout


def test_none_imports_no_numba(tmp_path):
    code = ("import sys, numpy as np; from colorquant import core; "
            "core.quantize_image(np.random.default_rng(0).integers(0, 256, (16, 16, 3), "
            "dtype=np.uint8), 4); print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_ciede2000_matches_sharma_table():
    """The 34 test pairs of Sharma, Wu and Dalal (2005), Table 1."""
    pairs = [
        ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
        ((50, 3.1571, -77.2803), (50, 0, -82.7485), 2.8615),
        ((50, 2.8361, -74.0200), (50, 0, -82.7485), 3.4412),
        ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0000),
        ((50, -1.1848, -84.8006), (50, 0, -82.7485), 1.0000),
        ((50, -0.9009, -85.5211), (50, 0, -82.7485), 1.0000),
        ((50, 0, 0), (50, -1, 2), 2.3669),
        ((50, -1, 2), (50, 0, 0), 2.3669),
        ((50, 2.4900, -0.0010), (50, -2.4900, 0.0009), 7.1792),
        ((50, 2.4900, -0.0010), (50, -2.4900, 0.0010), 7.1792),
        ((50, 2.4900, -0.0010), (50, -2.4900, 0.0011), 7.2195),
        ((50, 2.4900, -0.0010), (50, -2.4900, 0.0012), 7.2195),
        ((50, -0.0010, 2.4900), (50, 0.0009, -2.4900), 4.8045),
        ((50, -0.0010, 2.4900), (50, 0.0010, -2.4900), 4.8045),
        ((50, -0.0010, 2.4900), (50, 0.0011, -2.4900), 4.7461),
        ((50, -0.0010, 2.4900), (50, 0.0012, -2.4900), 4.7461),
        ((50, 2.5, 0), (50, 0, -2.5), 4.3065),
        ((50, 2.5, 0), (73, 25, -18), 27.1492),
        ((50, 2.5, 0), (61, -5, 29), 22.8977),
        ((50, 2.5, 0), (56, -27, -3), 31.9030),
        ((50, 2.5, 0), (58, 24, 15), 19.4535),
        ((50, 2.5, 0), (50, 3.1736, 0.5854), 1.0000),
        ((50, 2.5, 0), (50, 3.2972, 0), 1.0000),
        ((50, 2.5, 0), (50, 1.8634, 0.5757), 1.0000),
        ((50, 2.5, 0), (50, 3.2592, 0.3350), 1.0000),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
        ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
        ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
        ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
        ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
        ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
        ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
        ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
        ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
        ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
    ]
    lab1 = np.array([p[0] for p in pairs], dtype=float)
    lab2 = np.array([p[1] for p in pairs], dtype=float)
    want = np.array([p[2] for p in pairs])
    np.testing.assert_allclose(metrics.delta_e2000(lab1, lab2), want, atol=5e-5)
    np.testing.assert_allclose(metrics.delta_e2000(lab2, lab1), want, atol=5e-5)


def test_cielab_of_the_primaries():
    lab = srgb_to_cielab(np.array([[255, 255, 255], [255, 0, 0], [0, 0, 255]], np.uint8))
    np.testing.assert_allclose(lab, [[100, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]],
                               atol=0.02)
    back = cielab_to_srgb(np.array([[100, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]]))
    np.testing.assert_array_equal(np.rint(back), [[255, 255, 255], [255, 0, 0], [0, 0, 255]])


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("method", list(Dither))
def test_error_measures_and_counts_of_a_result_are_over_its_pixels(monkeypatch, method,
                                                                   channels, threads):
    """MSE, mean ΔE2000 and the palette's pixel counts, against a plain per-pixel count; with
    bands of a few rows (the dithering mappers sum them band by band), side by side in
    threads for the threshold methods."""
    monkeypatch.setattr(dither, "BAND_PIXELS", 40)
    _threads(monkeypatch, threads)
    image = _gradient(12, 15, channels=channels, seed=4)
    if channels == 4:
        image[2:5, 3:9, 3] = 0  # fully transparent: transparent black in the measures
        image[2:5, 3:9, :3] = 200
    result = core.quantize(image, QuantizeOptions(colors=5, dither=method))
    indices = _indices(result).reshape(-1)
    shown = image.reshape(-1, channels).copy()
    if channels == 4:
        shown[shown[:, 3] == 0] = 0
    became = result.palette.colors[indices]
    assert np.array_equal(result.palette.counts,
                          np.bincount(indices, minlength=len(result.palette)))
    per_pixel = metrics.delta_e2000(srgb_to_cielab(shown[:, :3]),
                                    srgb_to_cielab(became[:, :3]))
    assert result.delta_e == pytest.approx(per_pixel.mean(), rel=1e-9)
    mse = ((shown.astype(float) - became) ** 2).mean()
    assert result.mse == pytest.approx(mse, rel=1e-12)


@pytest.mark.parametrize("name", [ColorSpace.OKLAB, ColorSpace.LAB])
def test_perceptual_round_trip_and_exact_search(name):
    """Every color of a lattice of the sRGB(A) cube (and random ones) decodes back to itself;
    the search is the brute-force nearest."""
    space = get_space(name)
    axis = np.arange(0, 256, 5, dtype=np.uint8)
    lattice = np.stack(np.meshgrid(axis, axis, axis, np.array([0, 1, 128, 255], np.uint8),
                                   indexing="ij"), axis=-1).reshape(-1, 4)
    np.testing.assert_array_equal(space.decode(space.encode(lattice)), lattice)
    np.testing.assert_array_equal(space.decode(space.encode(lattice[:, :3])), lattice[:, :3])
    colors = random_image(1, 500, seed=3)[0]
    np.testing.assert_array_equal(space.decode(space.encode(colors)), colors)
    centers = space.metric(random_image(1, 40, seed=4)[0])
    points = space.metric(colors)
    want = [_brute_nearest(p, centers.tolist()) for p in points.tolist()]
    np.testing.assert_array_equal(space.nearest(points, centers), want)


@pytest.mark.parametrize("name", [ColorSpace.OKLAB, ColorSpace.LAB])
@pytest.mark.parametrize("k", [12, 100])  # 100: above fit.FAST_COLORS (the k > 64 route)
def test_perceptual_fit_maps_every_color_to_its_nearest_in_the_space(k, name):
    image = _gradient(30, 40, seed=6)
    result = core.quantize(image, QuantizeOptions(colors=k, space=name))
    assert len(result.palette) == min(k, len(np.unique(image.reshape(-1, 3), axis=0)))
    space = get_space(name)
    centers = space.metric(result.palette.colors[_allowed(result.palette.colors)]).tolist()
    allowed = _allowed(result.palette.colors)
    for pixel, index in zip(image.reshape(-1, 3)[::7], _indices(result).ravel()[::7],
                            strict=True):
        assert index == allowed[_brute_nearest(space.metric(pixel[None])[0].tolist(), centers)]


# --- the command --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("--dither-strength", "1.5"), ("--dither", "wobble"),
                                  ("--space", "xyz"), ("--dither-strength", "-0.1")])
def test_bad_values_are_usage_errors(small_png, tmp_path, args):
    proc = run(small_png, *args, "-o", tmp_path / "out.png")
    assert proc.returncode == 2
    assert args[1].encode() in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_dither_to_jpeg_warns_and_works(small_png, tmp_path):
    proc = run(small_png, "--dither", "fs", "-o", tmp_path / "out.jpg")
    assert proc.returncode == 0, proc.stderr
    assert b"cannot store a palette" in proc.stderr
    assert Image.open(tmp_path / "out.jpg").size == (32, 24)


def test_dithered_batch_is_reproducible_and_keeps_the_shared_palette(tmp_path):
    """Same bytes on every run and any -j; with --shared-palette the palette is the one
    fitted without dithering (dithering changes only the mapping)."""
    inputs = []
    for i in range(3):
        path = tmp_path / f"in{i}.png"
        Image.fromarray(_gradient(40, 50 + i, seed=i)).save(path)
        inputs.append(path)
    outputs = {}
    for name, extra in (("a", ["-j", "1"]), ("b", ["-j", "2"]), ("plain", ["-j", "2"])):
        dither_args = [] if name == "plain" else ["--dither", "fs"]
        proc = run(*inputs, "-k", "8", "--shared-palette", "--out-dir", tmp_path / name,
                   "--json", *dither_args, *extra)
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        assert all(r["delta_e"] > 0 for r in records)
        outputs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}
    assert outputs["a"] == outputs["b"]
    for name, data in outputs["a"].items():
        dithered = Image.open(tmp_path / "a" / name)
        plain = Image.open(tmp_path / "plain" / name)
        assert dithered.getpalette() == plain.getpalette()
        assert data != outputs["plain"][name]


def test_palette_file_with_blue_noise(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_gradient(20, 30)).save(src)
    gpl = tmp_path / "p.gpl"
    gpl.write_text("GIMP Palette\n#\n0 0 0\n255 255 255\n128 64 32\n20 200 90\n")
    proc = run(src, "--palette", gpl, "--dither", "blue-noise", "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).reshape(-1, 3)
    palette = {(0, 0, 0), (255, 255, 255), (128, 64, 32), (20, 200, 90)}
    assert {tuple(c) for c in out.tolist()} <= palette


# --- transparency: premultiplied alpha ----------------------------------------------------


def _translucent(h: int, w: int, seed: int) -> np.ndarray:
    """A gradient with every alpha: clear, faint, half and opaque pixels."""
    image = _gradient(h, w, channels=4, seed=seed)
    rng = np.random.default_rng(seed)
    image[:, :, 3] = rng.choice([0, 1, 7, 40, 128, 200, 255], size=(h, w))
    return image


@pytest.mark.parametrize("space", list(ColorSpace))
@pytest.mark.parametrize("given", [False, True])
def test_rgba_nearest_is_the_premultiplied_reference(space, given):
    """The undithered mapping of an image with every alpha (a fitted palette, or a given one
    with faint and half-transparent entries) is the plain loop over premultiplied
    coordinates."""
    image = _translucent(17, 23, seed=11)
    if given:
        palette = _fixed_palette(20, 4, seed=5)
        result = core.quantize(image, QuantizeOptions(space=space), palette=palette)
    else:
        result = core.quantize(image, QuantizeOptions(colors=12, space=space))
    np.testing.assert_array_equal(_indices(result),
                                  reference_nearest(image, result.palette.colors, space))


@pytest.mark.parametrize("space", list(ColorSpace))
def test_a_faint_pixel_takes_the_entry_nearest_after_compositing(space):
    """A faint red pixel (alpha 10) is nearer to faint black than to nearly opaque red once
    premultiplied (either shows as almost nothing over any background, the red one as red);
    unpremultiplied, with alpha a fourth coordinate, it was the red."""
    image = np.array([[[255, 0, 0, 10]]], dtype=np.uint8)
    palette = Palette(np.array([[255, 0, 0, 200], [0, 0, 0, 10]], np.uint8), np.ones(2, np.int64))
    assert _indices(core.quantize(image, QuantizeOptions(space=space),
                                      palette=palette)).item() == 1


@pytest.mark.parametrize("space", list(ColorSpace))
def test_premultiplied_colors_round_trip(space):
    """Every visible color of a lattice of the sRGBA cube decodes back to itself."""
    strategy = get_space(space, 4)
    axis = np.arange(0, 256, 15, dtype=np.uint8)
    lattice = np.stack(np.meshgrid(axis, axis, axis, np.array([1, 3, 128, 255], np.uint8),
                                   indexing="ij"), axis=-1).reshape(-1, 4)
    np.testing.assert_array_equal(strategy.decode(strategy.encode(lattice)), lattice)


@pytest.mark.parametrize("space", list(ColorSpace))
def test_rgba_fs_and_threshold_methods_are_the_reference(space):
    image = _translucent(15, 19, seed=3)
    opts = QuantizeOptions(colors=9, dither=Dither.FS, space=space)
    result = core.quantize(image, opts)
    np.testing.assert_array_equal(_indices(result),
                                  reference_fs(image, result.palette.colors, 1.0, space))
    opts = QuantizeOptions(colors=9, dither=Dither.ORDERED, space=space)
    result = core.quantize(image, opts)
    np.testing.assert_array_equal(
        _indices(result), _reference_threshold(image, result.palette.colors, dither.bayer8(),
                                               1.0, space))


# --- selective dithering --------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_fs_quiet_pixels_are_the_reference(channels):
    """With a palette holding the color of a flat patch (quiet) and a gradient (mostly not)."""
    image = _translucent(14, 18, seed=2) if channels == 4 else _gradient(14, 18, seed=2)
    image[3:9, 4:12] = (90, 90, 90, 255)[:channels]
    image[3:5, 4:6, :3] = (91, 90, 89)  # squared error 2: still quiet
    fixed = _fixed_palette(6, channels, seed=3).colors
    colors = np.vstack([fixed, np.array([(90, 90, 90, 255)[:channels]], np.uint8)])
    palette = Palette(colors, np.ones(len(colors), np.int64))
    prepared = core.prepare(image)
    labels = core._labels(prepared.histogram.colors, palette, QuantizeOptions())
    got = dither.fs_quiet(prepared, palette, labels)
    assert got.astype(bool).tolist() == reference_quiet(image, palette.colors, ColorSpace.RGB)
    assert got[3:9, 4:12].all() and not got.all()


@pytest.mark.parametrize("space", list(ColorSpace))
def test_fs_damping_is_the_reference(monkeypatch, space):
    """A low damping bound (most errors damped) and the default, in every space."""
    image = _gradient(16, 22, seed=7)
    for damp in (0.3, dither.FS_DAMP):
        monkeypatch.setattr(dither, "FS_DAMP", damp)
        result = core.quantize(image, QuantizeOptions(colors=5, dither=Dither.FS,
                                                          space=space))
        np.testing.assert_array_equal(
            _indices(result), reference_fs(image, result.palette.colors, 1.0, space))


def test_fs_leaves_a_nearly_exact_flat_area_undithered():
    """A flat area within FS_QUIET of a palette color takes that color everywhere, even with
    a strong error arriving from a dithered gradient beside it; plain diffusion would spread
    that error into it."""
    image = _gradient(20, 40, seed=1)
    image[:, 20:] = (101, 99, 100)
    palette = Palette(np.array([[0, 0, 0], [100, 100, 100], [255, 255, 255], [255, 0, 0],
                                [0, 255, 0], [0, 0, 255]], np.uint8), np.ones(6, np.int64))
    out = _indices(core.quantize(image, QuantizeOptions(dither=Dither.FS), palette=palette))
    assert (out[:, 20:] == 1).all()
    assert len(np.unique(out[:, :20])) > 3  # the gradient is dithered
