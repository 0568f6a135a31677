"""Property tests (Hypothesis) of the pure stages, each against a plain Python reference.

Histogram, merge, lookup, pack/unpack; the fit on tiny images; the exact nearest mapping and
its tie rule; palette files of every format; ``--name`` rendering.
"""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from colorquant import core, nearest, pixels, plan
from colorquant.errors import PlanError
from colorquant.options import QuantizeOptions
from colorquant.palette import Palette
from colorquant.palettefile import read_palette, write_palette

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

channels = st.sampled_from([3, 4])
#: Keys drawn from a few values (many repeats, ties, transparent pixels) or from all of them.
key_values = st.one_of(
    st.sampled_from([0, 1, 0x00FFFFFF, 0x01000000, 0xFF000000, 0xFFFFFFFF, 0x7F102030]),
    st.integers(0, 2**32 - 1),
)
keys_arrays = arrays(np.uint32, st.integers(0, 200), elements=key_values)


def canonical_key(key: int, n_channels: int) -> int:
    """The reference: RGB drops the padding byte; RGBA makes every alpha-0 pixel key 0."""
    if n_channels == 3:
        return key & 0xFFFFFF
    return key if key >> 24 else 0


# --- pixels ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)  # each banded RGB case zeroes a 64 MB table
@given(keys=keys_arrays, n_channels=channels, cuts=st.lists(st.integers(0, 200), max_size=4))
def test_histogram_counts_every_pixel_once(keys, n_channels, cuts):
    expected = Counter(canonical_key(int(k), n_channels) for k in keys)
    whole = pixels.histogram(keys, n_channels)
    assert whole.keys.dtype == np.uint32 and whole.counts.dtype == np.int64
    assert whole.keys.tolist() == sorted(expected)
    assert whole.counts.tolist() == [expected[k] for k in sorted(expected)]
    assert whole.n_pixels == len(keys)
    # in bands (without a pixel count: the dense RGB table is used) the answer is the same
    bounds = [0, *sorted(min(c, len(keys)) for c in cuts), len(keys)]
    bands = [keys[a:b] for a, b in itertools.pairwise(bounds)]
    banded = pixels.histogram(iter(bands), n_channels)
    assert banded.keys.tolist() == whole.keys.tolist()
    assert banded.counts.tolist() == whole.counts.tolist()


@FAST
@given(parts=st.lists(keys_arrays, min_size=1, max_size=4), n_channels=channels,
       order=st.randoms(use_true_random=False))
def test_merge_is_the_histogram_of_all_pixels_in_any_order(parts, n_channels, order):
    histograms = [pixels.histogram(p, n_channels) for p in parts]
    merged = pixels.merge(histograms)
    shuffled = list(histograms)
    order.shuffle(shuffled)
    again = pixels.merge(shuffled)
    everything = pixels.histogram(np.concatenate(parts), n_channels)
    for other in (again, everything):
        assert merged.keys.tolist() == other.keys.tolist()
        assert merged.counts.tolist() == other.counts.tolist()


@FAST
@given(keys=arrays(np.uint32, st.integers(1, 150), elements=key_values), n_channels=channels,
       seed=st.integers(0, 2**32 - 1), tile=st.booleans())
def test_lookup_gives_each_pixel_the_label_of_its_color(keys, n_channels, seed, tile):
    if tile:  # enough pixels for the dense RGB table
        keys = np.tile(keys, -(-pixels.TABLE_FROM // len(keys)))
    hist = pixels.histogram(keys, n_channels)
    labels = np.random.default_rng(seed).integers(0, 256, len(hist), dtype=np.uint8)
    label_of = {int(k): int(v) for k, v in zip(hist.keys, labels, strict=True)}
    out = pixels.lookup(keys, hist, labels)
    assert out.dtype == np.uint8 and out.shape == keys.shape
    step = max(1, len(keys) // 500)  # a sample of a tiled array: the rest repeats it
    assert [int(v) for v in out[::step]] == [
        label_of[canonical_key(int(k), n_channels)] for k in keys[::step]]


@FAST
@given(colors=arrays(np.uint8, st.tuples(st.integers(0, 50), st.sampled_from([3, 4]))))
def test_pack_and_unpack_are_inverse(colors):
    n_channels = colors.shape[1]
    keys = pixels.pack(colors)
    assert keys.dtype == np.uint32 and keys.shape == (len(colors),)
    assert [int(k) for k in keys] == [
        sum(int(v) << (8 * i) for i, v in enumerate(row)) for row in colors]
    back = pixels.unpack(keys, n_channels)
    assert back.dtype == np.uint8 and np.array_equal(back, colors)
    assert np.array_equal(pixels.pack(pixels.unpack(keys, 4)), keys)


# --- the exact nearest mapping ----------------------------------------------------------------

small_or_full = st.sampled_from([3, 255])


@st.composite
def points_and_centers(draw, n_channels=3):
    top = draw(small_or_full)  # small ranges make exact ties common
    cell = st.integers(0, top)
    points = draw(arrays(np.uint8, (draw(st.integers(1, 40)), n_channels), elements=cell))
    centers = draw(arrays(np.uint8, (draw(st.integers(1, 12)), n_channels), elements=cell))
    return points, centers


def squared(a, b) -> int:
    return sum((int(x) - int(y)) ** 2 for x, y in zip(a, b, strict=True))


@FAST
@given(data=points_and_centers())
def test_remap_nearest_is_exact_and_ties_go_to_the_lowest_index(data):
    points, centers = data
    found = nearest.nearest(points.astype(np.float32), centers.astype(np.float32))
    assert found.dtype == np.uint8 and found.shape == (len(points),)
    for point, index in zip(points, found, strict=True):
        distances = [squared(point, c) for c in centers]
        assert int(index) == distances.index(min(distances))


@FAST
@given(data=points_and_centers(), order=st.randoms(use_true_random=False))
def test_pipeline_nearest_ties_go_to_the_color_that_sorts_first(data, order):
    """The README's tie rule: an exact tie goes to the palette color that sorts first by R, G,
    B, so the palette's order never changes a pixel."""
    points, centers = data
    options = QuantizeOptions()
    found = core._nearest(points, centers, options)
    shuffled = list(range(len(centers)))
    order.shuffle(shuffled)
    found_shuffled = core._nearest(points, centers[shuffled], options)
    for i, point in enumerate(points):
        distances = [squared(point, c) for c in centers]
        best = min(tuple(int(v) for v in c) for c, d in zip(centers, distances, strict=True)
                   if d == min(distances))
        assert tuple(int(v) for v in centers[found[i]]) == best
        assert tuple(int(v) for v in centers[shuffled][found_shuffled[i]]) == best


# --- fitting and quantizing tiny images --------------------------------------------------------


@st.composite
def tiny_images(draw, n_channels=3):
    pool = draw(arrays(np.uint8, (draw(st.integers(1, 12)), n_channels),
                       elements=st.integers(0, draw(small_or_full))))
    if n_channels == 4:  # some pixels fully transparent
        pool[:, 3] = np.where(pool[:, 3] < 64, 0, pool[:, 3])
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    index = draw(arrays(np.intp, (h, w), elements=st.integers(0, len(pool) - 1)))
    return pool[index]


def output_colors(result: core.QuantizeResult) -> tuple[np.ndarray, np.ndarray]:
    """The output pixel indices (h, w) and the palette as uint8 (k, C)."""
    return np.asarray(result.image), result.palette.colors


@SLOW
@given(image=tiny_images(), k=st.integers(2, 8), seed=st.integers(0, 3))
def test_quantize_maps_every_pixel_to_its_nearest_palette_color(image, k, seed):
    options = QuantizeOptions(colors=k, seed=seed)
    result = core.quantize(image, options)
    indices, palette = output_colors(result)
    assert result.image.mode == "P" and indices.shape == image.shape[:2]
    assert palette.dtype == np.uint8 and 1 <= len(palette) <= k
    assert indices.max() < len(palette)
    assert result.palette.total == image.shape[0] * image.shape[1]
    distinct = {tuple(p) for p in image.reshape(-1, 3).tolist()}
    for pixel, index in zip(image.reshape(-1, 3), indices.reshape(-1), strict=True):
        distances = [squared(pixel, c) for c in palette]
        assert squared(pixel, palette[index]) == min(distances)
    if len(distinct) <= k:  # no fit: the image comes back unchanged
        assert np.array_equal(palette[indices], image)
    again = core.quantize(image, options)
    assert np.array_equal(again.palette.colors, palette)
    assert again.image.tobytes() == result.image.tobytes()


@SLOW
@given(image=tiny_images(n_channels=4), k=st.integers(2, 8))
def test_transparent_pixels_take_the_clear_entry_and_visible_ones_the_nearest(image, k):
    result = core.quantize(image, QuantizeOptions(colors=k))
    indices, palette = output_colors(result)
    assert 1 <= len(palette) <= k
    shown = [i for i, c in enumerate(palette) if len(c) == 3 or c[3] > 0]
    for pixel, index in zip(image.reshape(-1, image.shape[2]), indices.reshape(-1),
                            strict=True):
        if len(pixel) == 4 and pixel[3] == 0:
            assert palette[index][3] == 0
        else:
            pixel = pixel if len(palette[0]) == 4 else pixel[:3]
            assert index in shown
            assert squared(*seen(pixel, palette[index])) == min(
                squared(*seen(pixel, palette[i])) for i in shown)


def seen(*colors):
    """The colors as the mapping compares them: RGBA premultiplied, ``(R·A, G·A, B·A,
    255·A)``, the error a viewer sees after compositing (docs/compression.md); RGB as is."""
    return [c if len(c) == 3 else (*(int(v) * int(c[3]) for v in c[:3]), 255 * int(c[3]))
            for c in colors]


@SLOW
@given(image=tiny_images(), k=st.integers(2, 6))
def test_fit_palette_of_a_histogram_has_at_most_k_used_colors(image, k):
    hist = pixels.histogram(pixels.pack(image.reshape(-1, 3)), 3)
    palette = core.fit_palette(hist, QuantizeOptions(colors=k))
    assert 1 <= len(palette) <= min(k, len(hist))
    assert palette.total == hist.n_pixels and (palette.counts > 0).all()
    assert list(palette.counts) == sorted(palette.counts, reverse=True)


# --- palette files ----------------------------------------------------------------------------

#: Formats, whether they hold alpha, and whether they keep repeated colors (images do not).
PALETTE_FORMATS = {".gpl": (False, True), ".json": (True, True), ".txt": (True, True),
                   ".hex": (True, True), ".png": (True, False), ".gif": (False, False),
                   ".webp": (True, False), ".tif": (True, False), ".bmp": (False, False)}


@st.composite
def palettes_for(draw, ext):
    alpha, repeats = PALETTE_FORMATS[ext]
    n_channels = draw(st.sampled_from([3, 4])) if alpha else 3
    colors = draw(arrays(np.uint8, (draw(st.integers(1, 40)), n_channels),
                         unique=False, elements=st.integers(0, draw(small_or_full))))
    if not repeats:
        _, first = np.unique(colors, axis=0, return_index=True)
        colors = colors[np.sort(first)]
        if n_channels == 4:
            # an image holds one fully transparent color (its RGB kept): keep the first
            clear = np.flatnonzero(colors[:, 3] == 0)
            colors = np.delete(colors, clear[1:], axis=0)
    counts = draw(arrays(np.int64, len(colors), elements=st.integers(0, 2**62)))
    return Palette(colors, counts)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_palette_files_round_trip_colors_and_order(data):
    with tempfile.TemporaryDirectory() as folder:
        for ext in PALETTE_FORMATS:
            palette = data.draw(palettes_for(ext), label=ext)
            path = Path(folder, "palette" + ext)
            write_palette(palette, path)
            back = read_palette(path)
            expected = palette.colors
            if PALETTE_FORMATS[ext][1] is False and palette.has_alpha and (
                    expected[:, 3] == 255).all():
                expected = expected[:, :3]  # an opaque image reads back as RGB
            assert np.array_equal(back.colors, expected), ext
            if ext == ".json":
                assert np.array_equal(back.counts, palette.counts)


# --- --name templates ---------------------------------------------------------------------------

file_names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                     min_size=1, max_size=40).filter(lambda n: n not in (".", ".."))
templates = st.lists(st.one_of(st.sampled_from(["{stem}", "{suffix}", "{ext}", "{k}", "{k:03d}",
                                                "{stem!r}", "{stem:>12}", "-", "."]),
                               st.text(st.characters(blacklist_characters="{}/\0",
                                                     blacklist_categories=("Cs",)),
                                       max_size=4)),
                     min_size=1, max_size=5).map("".join)


@FAST
@given(name=file_names, k=st.integers(2, 256))
def test_default_name_keeps_the_stem(name, k):
    rendered = plan.render_name(plan.DEFAULT_NAME, name, k, "png")
    assert rendered.endswith(f"-{k}c.png") and "/" not in rendered
    stem = rendered[: -len(f"-{k}c.png")]
    suffix = Path(name).suffix
    assert stem + suffix == name  # stem and suffix split the name without losing a character


@FAST
@given(template=templates, name=file_names)
def test_a_checked_template_gives_a_file_name_or_a_plan_error(template, name):
    try:
        plan.check_name_template(template)
    except PlanError:
        return
    try:
        rendered = plan.render_name(template, name, 16, "png")
    except PlanError:
        return
    assert rendered not in ("", ".", "..")
    assert "/" not in rendered and "\0" not in rendered
