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
