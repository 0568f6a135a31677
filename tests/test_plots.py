"""The scatter and comparison figures: right panels, titles, axes, and readable files."""

import numpy as np
import pytest
from PIL import Image

from colorquant import plots, quantize_image
from tests.conftest import random_image


@pytest.fixture(scope="module")
def original() -> Image.Image:
    return Image.fromarray(random_image(120, 160, seed=21))


@pytest.fixture(scope="module")
def result(original):
    return quantize_image(original, 6)


def test_scatter_has_two_rows_of_red_green_and_red_blue(original, result):
    fig = plots.scatter_figure(original, result, seed=0)
    titles = [sub.get_suptitle() for sub in fig.subfigs]
    assert titles == ["Input color space: 16 million possible colors",
                      f"Reduced color space: {result.n_colors} colors"]
    axes = [ax for sub in fig.subfigs for ax in sub.axes]
    assert len(axes) == 4
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in axes]
    assert labels == [("Red", "Green"), ("Red", "Blue")] * 2
    for ax in axes:
        assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)
    # the lower row is colored by the palette: at most k distinct face colors
    faces = axes[2].collections[0].get_facecolors()
    assert len(np.unique(np.round(faces[:, :3], 4), axis=0)) <= result.n_colors


def test_sample_is_seeded_and_capped(original, result):
    a = plots.sample_pixels(original, result, seed=1)
    b = plots.sample_pixels(original, result, seed=1)
    c = plots.sample_pixels(original, result, seed=2)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
    assert a[0].shape == (10_000, 3)
    # every sampled "after" color is the palette color of the same pixel
    assert set(map(tuple, a[1].tolist())) <= set(map(tuple, result.palette.colors.tolist()))


def test_small_image_samples_every_pixel():
    tiny = Image.fromarray(random_image(5, 7, seed=3))
    before, after = plots.sample_pixels(tiny, quantize_image(tiny, 4), seed=0)
    assert len(before) == 35 == len(after)


def test_comparison_titles(original, result):
    fig = plots.comparison_figure(original, result)
    assert [ax.get_title() for ax in fig.axes] == ["Original Image",
                                                   f"{result.n_colors}-color Image"]


@pytest.mark.parametrize("ext", ["png", "svg", "pdf", "jpg"])
def test_figures_save_in_each_format(tmp_path, original, result, ext):
    path = tmp_path / f"plot.{ext}"
    plots.save(plots.comparison_figure(original, result), path)
    data = path.read_bytes()
    assert len(data) > 1000
    if ext in ("png", "jpg"):
        with Image.open(path) as im:
            im.load()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_reduced_row_marks_each_palette_color_by_its_share(original, result):
    fig = plots.scatter_figure(original, result, seed=0)
    lower = fig.subfigs[1].axes
    colors, counts = result.palette.colors, result.palette.counts
    order = np.argsort(-counts, kind="stable")
    for ax, channel in zip(lower, (1, 2), strict=True):
        cloud, centers = ax.collections
        # the centers are the palette colors, where they sit in this panel's plane
        expected = colors[order][:, [0, channel]] / 255.0
        assert np.allclose(centers.get_offsets(), expected)
        assert np.allclose(centers.get_facecolors()[:, :3], colors[order] / 255.0)
        # area grows with the share of pixels: the most used color is the largest marker
        sizes = centers.get_sizes()
        assert np.all(np.diff(sizes) <= 0) and sizes[0] > sizes[-1] > plots.CENTER_MIN
        shares = counts[order] / counts.sum()
        assert np.allclose(sizes, plots.CENTER_MIN + plots.CENTER_SPAN * shares)
        # outlined, and drawn over the cloud of recoloured pixels
        assert np.allclose(centers.get_edgecolors()[:, :3], 0)
        assert centers.get_zorder() > cloud.get_zorder()
        assert len(cloud.get_offsets()) == 10_000
    # the input row has no centers
    assert [len(ax.collections) for ax in fig.subfigs[0].axes] == [1, 1]


def test_centers_leave_out_the_transparent_entry_and_unused_colors():
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[:10] = (200, 10, 10, 255)
    rgba[10:15] = (10, 200, 10, 255)  # the rest stays fully transparent
    result = quantize_image(rgba, 4)
    centers, shares = plots.palette_centers(result)
    assert centers.tolist() == [[200, 10, 10], [10, 200, 10]]
    assert np.allclose(shares, [300 / 450, 150 / 450])


@pytest.mark.parametrize("size", [(160, 120), (90, 300), (400, 100)])
def test_comparison_has_no_blank_band(tmp_path, size):
    picture = Image.fromarray(random_image(size[1], size[0], seed=5))
    path = tmp_path / "compare.png"
    plots.save(plots.comparison_figure(picture, quantize_image(picture, 8)), path)
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"))
    height, width = pixels.shape
    rows = np.flatnonzero((pixels < 250).any(axis=1))
    cols = np.flatnonzero((pixels < 250).any(axis=0))
    margin = plots.COMPARE_MARGIN * 100 + 2  # pixels at the saved 100 dpi, and the frame
    # only the margins are blank: under, beside, and above the titles
    assert height - 1 - rows[-1] <= margin and rows[0] <= plots.COMPARE_TITLE * 100
    assert cols[0] <= margin and width - 1 - cols[-1] <= margin
    # the two images fill the width: the gap between them is the only blank column band
    blank = np.flatnonzero(~(pixels[rows[-1] - 5] < 250))
    assert len(blank) <= 2 * margin + plots.COMPARE_GAP * 100 + 4
