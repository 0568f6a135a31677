import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from colorquant import pixels


@given(arrays(np.uint8, st.tuples(st.integers(0, 50), st.sampled_from([3, 4]))))
def test_pack_unpack_round_trip(colors):
    keys = pixels.pack(colors)
    assert keys.dtype == np.uint32
    assert np.array_equal(pixels.unpack(keys, colors.shape[1]), colors)


def _keys(array: np.ndarray) -> np.ndarray:
    image = Image.fromarray(array, "RGB")
    return pixels.pixel_keys(image.tobytes("raw", "RGBX"))


def test_keys_match_pillow_pixels():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    keys = pixels.canonical(_keys(array), 3)
    assert np.array_equal(pixels.unpack(keys, 3), array.reshape(-1, 3))


def test_histogram_counts_every_color():
    array = np.array([[[1, 2, 3], [1, 2, 3]], [[4, 5, 6], [1, 2, 3]]], dtype=np.uint8)
    hist = pixels.histogram(_keys(array), 3)
    assert len(hist) == 2
    assert hist.n_pixels == 4
    found = {tuple(c): n for c, n in zip(hist.colors.tolist(), hist.counts.tolist(), strict=True)}
    assert found == {(1, 2, 3): 3, (4, 5, 6): 1}
    assert np.all(np.diff(hist.keys.astype(np.int64)) > 0)


def test_dense_and_sorting_paths_agree(monkeypatch):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 40, (300, 400, 3), dtype=np.uint8)
    keys = _keys(array)
    monkeypatch.setattr(pixels, "DENSE_FROM", 1 << 40)
    sorted_hist = pixels.histogram(keys, 3)
    labels = (np.arange(len(sorted_hist)) % 7).astype(np.uint8)
    sorted_map = pixels.lookup(keys, sorted_hist, labels)
    monkeypatch.setattr(pixels, "DENSE_FROM", 1)
    monkeypatch.setattr(pixels, "STRIP", 10_007)  # several uneven strips
    dense_hist = pixels.histogram(keys, 3)
    assert np.array_equal(sorted_hist.keys, dense_hist.keys)
    assert np.array_equal(sorted_hist.counts, dense_hist.counts)
    assert np.array_equal(pixels.lookup(keys, dense_hist, labels), sorted_map)


def test_compiled_dense_histogram_counts_like_a_plain_loop(monkeypatch):
    """With the worker's compiled loops loaded, the dense histogram of a skewed photo-like
    image (a few colors with most pixels, a long tail, padding bytes that differ) gives the
    counts of a plain dictionary loop over the pixels, in strips of uneven length."""
    monkeypatch.setattr(pixels, "_KERNEL", pixels._KERNEL)  # unloaded again after the test
    pixels.load_kernel()
    assert pixels._KERNEL is not None
    monkeypatch.setattr(pixels, "DENSE_FROM", 1)
    monkeypatch.setattr(pixels, "STRIP", 10_007)
    rng = np.random.default_rng(5)
    common = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    array = rng.integers(0, 256, (211, 157, 3), dtype=np.uint8)
    pick = rng.random((211, 157)) < 0.8
    array[pick] = common[rng.integers(0, 12, int(pick.sum()))]
    keys = _keys(array) | (rng.integers(0, 256, 211 * 157, dtype=np.uint32) << np.uint32(24))
    hist = pixels.histogram(keys, 3)
    found: dict[tuple[int, ...], int] = {}
    for color in array.reshape(-1, 3).tolist():
        found[tuple(color)] = found.get(tuple(color), 0) + 1
    assert hist.keys.dtype == np.uint32 and hist.counts.dtype == np.int64
    assert dict(zip(map(tuple, hist.colors.tolist()), hist.counts.tolist(), strict=True)) == found
    assert np.all(np.diff(hist.keys.astype(np.int64)) > 0)
    monkeypatch.setattr(pixels, "_KERNEL", None)  # and numpy's path agrees
    plain = pixels.histogram(keys, 3)
    assert np.array_equal(plain.keys, hist.keys) and np.array_equal(plain.counts, hist.counts)


def test_lookup_maps_each_pixel_to_its_color_label():
    rng = np.random.default_rng(2)
    array = rng.integers(0, 4, (20, 30, 3), dtype=np.uint8)
    keys = _keys(array)
    hist = pixels.histogram(keys, 3)
    labels = np.arange(len(hist), dtype=np.uint8)
    mapped = pixels.lookup(keys, hist, labels)
    assert np.array_equal(hist.colors[mapped], array.reshape(-1, 3))


def test_transparent_pixels_share_one_key():
    rgba = np.array([[[1, 2, 3, 0], [9, 9, 9, 0], [1, 2, 3, 128]]], dtype=np.uint8)
    keys = pixels.pixel_keys(Image.fromarray(rgba, "RGBA").tobytes("raw", "RGBA"))
    hist = pixels.histogram(keys, 4)
    assert len(hist) == 2
    assert hist.colors.tolist() == [[0, 0, 0, 0], [1, 2, 3, 128]]


def _reference_lookup(array: np.ndarray, labels_of: dict[tuple[int, ...], int]) -> np.ndarray:
    """Each pixel's label, by a plain loop over the pixels (a fully transparent pixel is the
    color 0, 0, 0, 0)."""
    flat = array.reshape(-1, array.shape[2])
    return np.array([labels_of[(0, 0, 0, 0) if len(pixel) == 4 and pixel[3] == 0
                               else tuple(int(v) for v in pixel)] for pixel in flat], np.uint8)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_image_lookup_in_row_ranges_is_the_plain_lookup(monkeypatch, threads, mode):
    """Side by side in row ranges (uneven ones: 53 rows), each read in strips of 2 rows (an
    odd one at a range's end), every pixel gets its color's label, checked against a plain
    loop; RGBA keeps the one-range route."""
    monkeypatch.setattr(pixels, "PARALLEL_FROM", 1000)
    monkeypatch.setattr(pixels, "LOOKUP_STRIP", 100)
    rng = np.random.default_rng(threads)
    colors = rng.integers(0, 256, (40, len(mode)), dtype=np.uint8)
    array = colors[rng.integers(0, len(colors), (53, 37))]
    image = Image.fromarray(array, mode)
    hist = pixels.histogram(pixels.key_strips(image, rows=7), len(mode), n_pixels=53 * 37)
    labels = rng.integers(0, 256, len(hist), dtype=np.uint8)
    labels_of = {tuple(int(v) for v in color): int(label)
                 for color, label in zip(hist.colors, labels, strict=True)}
    got = pixels.image_lookup(image, hist, labels, threads=threads)
    assert np.array_equal(got, _reference_lookup(array, labels_of))
    assert len(pixels._row_ranges(image, threads)) == (min(threads, 53) if mode == "RGB" else 1)


def test_image_lookup_of_a_large_photo_in_two_threads_is_the_one_thread_lookup():
    """At the real threshold (a 4 MP image), both routes give the same indices."""
    width = 2048
    height = -(-pixels.PARALLEL_FROM // width)
    rng = np.random.default_rng(7)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    array[:, :, 2] &= 0xF0  # fewer distinct colors, so labels repeat
    image = Image.fromarray(array, "RGB")
    hist = pixels.histogram(pixels.key_strips(image), 3, n_pixels=width * height)
    labels = (np.arange(len(hist)) % 256).astype(np.uint8)
    assert len(pixels._row_ranges(image, 2)) == 2
    one = pixels.lookup(pixels.key_strips(image), hist, labels, n_pixels=width * height)
    assert np.array_equal(pixels.image_lookup(image, hist, labels, threads=2), one)
    sample = rng.integers(0, width * height, 2000)
    keys = pixels.canonical(pixels.pack(array.reshape(-1, 3)[sample]), 3)
    assert np.array_equal(one[sample], labels[np.searchsorted(hist.keys, keys)])
