import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colorquant import nearest


def brute_force(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distances in exact integers; index of the first minimum."""
    d = ((points[:, None, :].astype(np.int64) - centers[None, :, :].astype(np.int64)) ** 2).sum(2)
    return d.argmin(axis=1)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 256), st.sampled_from([3, 4]))
def test_nearest_is_exact(seed, k, channels):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 256, (500, channels), dtype=np.uint8)
    centers = rng.integers(0, 256, (k, channels), dtype=np.uint8)
    got = nearest.nearest(points.astype(np.float32), centers.astype(np.float32))
    assert np.array_equal(got, brute_force(points, centers))


def test_ties_go_to_the_lowest_index():
    centers = np.array([[0, 0, 0], [2, 0, 0], [0, 0, 0]], dtype=np.float32)
    points = np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32)
    assert nearest.nearest(points, centers).tolist() == [0, 0]


def test_extreme_colors_are_exact_across_chunks(monkeypatch):
    monkeypatch.setattr(nearest, "CHUNK", 7)
    grid = np.array(np.meshgrid(*[np.array([0, 1, 127, 128, 254, 255])] * 3)).reshape(3, -1).T
    centers = np.array([[0, 0, 0], [255, 255, 255], [128, 127, 128], [1, 254, 0]])
    got = nearest.nearest(grid.astype(np.float32), centers.astype(np.float32))
    assert np.array_equal(got, brute_force(grid, centers))


def test_more_than_256_centers_is_refused():
    with pytest.raises(ValueError):
        nearest.nearest(np.zeros((1, 3), np.float32), np.zeros((257, 3), np.float32))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 256))
def test_nearest_is_exact_in_float64_on_premultiplied_coordinates(seed, k):
    """Premultiplied ``rgb`` coordinates (R·A, G·A, B·A, 255·A) run to 65025: their distances
    need float64, where every product and sum of them is still a whole number (exact)."""
    from colorquant.colorspace import ColorSpace, get_space

    rng = np.random.default_rng(seed)
    points = rng.integers(0, 256, (400, 4), dtype=np.uint8)
    centers = rng.integers(0, 256, (k, 4), dtype=np.uint8)
    centers[: k // 3] = points[: k // 3]  # exact hits and ties
    space = get_space(ColorSpace.RGB, 4)
    got = space.nearest(space.metric(points), space.metric(centers))

    def premultiplied(c: np.ndarray) -> np.ndarray:
        c = c.astype(np.int64)
        return np.hstack([c[:, :3] * c[:, 3:], 255 * c[:, 3:]])

    assert np.array_equal(got, brute_force(premultiplied(points), premultiplied(centers)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 256), st.integers(1, 255))
def test_compiled_nearest_is_exact_with_ties(seed, k, top):
    """In a process that loaded the fit's kernel, the RGB mapping's nearest search is the
    compiled one (on the fit's threads): the brute-force answers, ties to the lowest index
    (centers in a small box and repeated: many exact ties), over sorted distinct colors as a
    histogram gives them and over points in any order."""
    from colorquant import fit

    fit.load_kernel()
    rng = np.random.default_rng(seed)
    points = np.unique(rng.integers(0, 256, (20000, 3), dtype=np.uint8), axis=0)
    centers = rng.integers(0, top + 1, (k, 3), dtype=np.uint8)
    centers[-1] = centers[0]
    for order in (np.arange(len(points)), rng.permutation(len(points))):
        got = fit.nearest_compiled(points[order].astype(np.float32), centers.astype(np.float32))
        assert got is not None and got.dtype == np.uint8
        assert np.array_equal(got, brute_force(points[order], centers))


def test_compiled_nearest_takes_only_whole_rgb_coordinates(monkeypatch):
    """Anything but whole-number RGB metric coordinates (OKLab's, a premultiplied RGBA's)
    keeps the BLAS search; many points go block by block, with the same answers."""
    from colorquant import fit

    fit.load_kernel()
    points = np.arange(30, dtype=np.float32).reshape(10, 3)
    assert fit.nearest_compiled(points, points[:2]) is not None
    assert fit.nearest_compiled(points + 0.5, points[:2]) is None
    assert fit.nearest_compiled(points, points[:2] + 0.25) is None
    assert fit.nearest_compiled(np.zeros((10, 4), np.float32), np.zeros((2, 4), np.float32)) is None
    rng = np.random.default_rng(3)
    many = np.unique(rng.integers(0, 256, (5000, 3), dtype=np.uint8), axis=0)
    centers = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    monkeypatch.setattr(fit, "COMPILED_NEAREST_POINTS", 999)  # six blocks, the last short
    got = fit.nearest_compiled(many.astype(np.float32), centers.astype(np.float32))
    assert np.array_equal(got, brute_force(many, centers))
    late = many.astype(np.float32)
    late[-1] += 0.5  # a point that is not whole, in the last block
    assert fit.nearest_compiled(late, centers.astype(np.float32)) is None
