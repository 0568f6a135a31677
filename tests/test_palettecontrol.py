"""Palette control: exactly N colors, pinned colors and the fewest colors for a PSNR target,
checked against brute-force references on small known inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from colorquant import fit, metrics, palettecontrol, pipeline
from colorquant.colorspace import get_space
from colorquant.options import ColorSpace, QuantizeOptions
from tests.conftest import run

RGB = get_space(ColorSpace.RGB)
OPTIONS = QuantizeOptions()


def nearest(colors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return pipeline._nearest(colors, centers, OPTIONS)


def brute_sse(colors: np.ndarray, weights: np.ndarray, centers: np.ndarray) -> int:
    """Weighted squared error with each color at its nearest center, by plain loops."""
    total = 0
    for color, weight in zip(colors.tolist(), weights.tolist(), strict=True):
        best = min(sum((a - b) ** 2 for a, b in zip(color, center, strict=True))
                   for center in centers.tolist())
        total += best * weight
    return total


def dominant_image(seed: int, dominant: int = 4, outliers: int = 60) -> np.ndarray:
    """Many copies of a few colors plus rare outliers (one pixel each), as an (H, 1, 3) array."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (dominant, 3), dtype=np.uint8)
    rows = [np.repeat(base, 5000, axis=0), rng.integers(0, 256, (outliers, 3), dtype=np.uint8)]
    return np.vstack(rows).reshape(-1, 1, 3)


def hist_of(image: np.ndarray) -> palettecontrol.Histogram:
    h = pipeline.prepare(image).histogram
    return palettecontrol.Histogram(h.colors, h.counts)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 6))
def test_an_added_center_never_raises_the_nearest_error(seed, k, extra):
    """The bound behind exact N: each color's nearest distance is a minimum over a larger set."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, (30, 3), dtype=np.uint8)
    weights = rng.integers(1, 100, 30)
    centers = rng.integers(0, 256, (k, 3), dtype=np.uint8)
    more = np.vstack([centers, rng.integers(0, 256, (extra, 3), dtype=np.uint8)])
    before, after = brute_sse(colors, weights, centers), brute_sse(colors, weights, more)
    assert after <= before
    labels = nearest(colors, more)
    assert palettecontrol.sse(colors, weights, more, labels) == after  # the fast error agrees


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_short_palette_is_filled_to_exactly_n_used_colors_at_no_higher_error(seed):
    hist = hist_of(dominant_image(seed))
    k = 16
    for short in (fit.fit_centers(hist.colors, hist.weights, k - 5, seed=0, space=RGB),
                  # duplicates and a center no color is nearest to
                  np.vstack([hist.colors[:3], hist.colors[:3], [[1, 2, 3]]]).astype(np.uint8)):
        before = brute_sse(hist.colors, hist.weights, short)
        centers, labels = palettecontrol.exact(hist, short, k, nearest=nearest, space=RGB)
        assert len(centers) == k == len(np.unique(centers, axis=0))
        assert np.array_equal(labels, nearest(hist.colors, centers))
        assert set(labels.tolist()) == set(range(k))  # every entry used by a pixel
        assert brute_sse(hist.colors, hist.weights, centers) <= before


def test_fewer_distinct_colors_than_n_give_exactly_those():
    colors = np.array([[0, 0, 0], [10, 20, 30], [200, 100, 0]], dtype=np.uint8)
    hist = palettecontrol.Histogram(colors, np.array([5, 1, 2]))
    centers, labels = palettecontrol.exact(hist, colors[:1], 8, nearest=nearest, space=RGB)
    assert sorted(map(tuple, centers.tolist())) == sorted(map(tuple, colors.tolist()))
    assert palettecontrol.sse(colors, hist.weights, centers, labels) == 0


@pytest.mark.parametrize("k", [8, 16, 64])
def test_pipeline_gives_exactly_n_colors_and_no_higher_error_than_the_plain_fit(k):
    image = dominant_image(3)
    h = pipeline.prepare(image).histogram
    plain = fit.fit_centers(h.colors, h.counts, k, seed=0, space=RGB)  # the old path
    before = metrics.weighted_mse(h.colors, plain[nearest(h.colors, plain)], h.counts)
    result = pipeline.quantize(image, QuantizeOptions(colors=k))
    assert len(result.palette) == k and (result.palette.counts > 0).all()
    assert result.mse <= before


def test_shared_palette_and_json_report_exactly_n(tmp_path):
    for i in range(2):
        Image.fromarray(dominant_image(10 + i)).save(tmp_path / f"in{i}.png")
    out = run("-k", "24", "--shared-palette", "--json", "--out-dir", str(tmp_path / "out"),
              str(tmp_path / "in0.png"), str(tmp_path / "in1.png"))
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [len(r["palette"]) for r in records] == [24, 24]
