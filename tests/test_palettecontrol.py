"""Palette control: exactly N colors, pinned colors and the fewest colors for a PSNR target,
checked against brute-force references on small known inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from colorquant import core, fit, metrics, palettecontrol
from colorquant.colorspace import get_space
from colorquant.options import ColorSpace, QuantizeOptions
from tests.conftest import run

RGB = get_space(ColorSpace.RGB)
OPTIONS = QuantizeOptions()


def nearest(colors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return core._nearest(colors, centers, OPTIONS)


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


def hist_of(image: np.ndarray) -> palettecontrol.WeightedColors:
    h = core.prepare(image).histogram
    return palettecontrol.WeightedColors(h.colors, h.counts)


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
    hist = palettecontrol.WeightedColors(colors, np.array([5, 1, 2]))
    centers, labels = palettecontrol.exact(hist, colors[:1], 8, nearest=nearest, space=RGB)
    assert sorted(map(tuple, centers.tolist())) == sorted(map(tuple, colors.tolist()))
    assert palettecontrol.sse(colors, hist.weights, centers, labels) == 0


@pytest.mark.parametrize("k", [8, 16, 64])
def test_pipeline_gives_exactly_n_colors_and_no_higher_error_than_the_plain_fit(k):
    image = dominant_image(3)
    h = core.prepare(image).histogram
    plain = fit.fit_centers(h.colors, h.counts, k, seed=0, space=RGB)  # the old path
    before = metrics.weighted_mse(h.colors, plain[nearest(h.colors, plain)], h.counts)
    result = core.quantize(image, QuantizeOptions(colors=k))
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


# --- --skip-if-larger -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sizes(tmp_path_factory):
    """A tiny JPEG of noise (its quantized PNG is larger) and an uncompressed PNG (smaller)."""
    folder = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        folder / "noise.jpg", quality=5)
    Image.fromarray(np.repeat(np.arange(96, dtype=np.uint8)[None, :, None], 64, 0).repeat(
        3, 2)).save(folder / "raw.png", compress_level=0)
    return folder


def test_skip_if_larger_writes_nothing_and_exits_98(sizes, tmp_path):
    out = tmp_path / "out"
    done = run("--skip-if-larger", "--out-dir", str(out), "--json", str(sizes / "noise.jpg"),
               str(sizes / "raw.png"))
    assert done.returncode == 98, done.stderr
    records = {json.loads(line)["input"]: json.loads(line)
               for line in done.stdout.decode().splitlines()}
    skipped = records[str(sizes / "noise.jpg")]
    assert skipped["status"] == "skipped" and "larger than the input" in skipped["error"]
    assert records[str(sizes / "raw.png")]["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["raw-16c.png"]  # no temporary file left
    assert (out / "raw-16c.png").stat().st_size <= (sizes / "raw.png").stat().st_size
    # standard input is compared with the bytes read; standard output gets nothing
    piped = run("-", "--skip-if-larger", "-o", "-", stdin=(sizes / "noise.jpg").read_bytes())
    assert piped.returncode == 98 and piped.stdout == b""
    assert "<stdin>: the output would be larger" in piped.stderr.decode()


def test_exit_code_precedence():
    from colorquant.report import ExitCode, Report

    report = Report()
    report.skip("a", "exists")
    assert report.exit_code == ExitCode.NOT_OVERWRITTEN
    report.skip("b", "larger", ExitCode.NOT_SMALLER)
    assert report.exit_code == ExitCode.NOT_SMALLER
    report.skip("c", "quality", ExitCode.QUALITY_TOO_LOW)
    report.skip("d", "exists")
    assert report.exit_code == ExitCode.QUALITY_TOO_LOW == 99
    report.failure("e", "corrupt")
    assert report.exit_code == ExitCode.FAILURE


# --- --target-psnr --------------------------------------------------------------------------


def smooth_image(seed: int) -> np.ndarray:
    """A small photo-like image: smooth gradients with mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2 + 20], axis=2) + rng.integers(-4, 5, (48, 64, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed,target", [(0, 24.0), (1, 27.5)])
def test_target_picks_n_that_reaches_it_while_n_minus_1_of_the_sequence_does_not(seed, target):
    hist = hist_of(smooth_image(seed))
    values = int(hist.weights.sum()) * 3
    limit = palettecontrol.sse_limit(target, values)
    start, labels = palettecontrol.exact(hist, fit.fit_centers(hist.colors, hist.weights, 64,
                                                               seed=0, space=RGB), 64,
                                         nearest=nearest, space=RGB)
    found = palettecontrol.fewest(hist, start, labels, limit_min=limit, limit_max=limit,
                                  nearest=nearest, space=RGB)
    n = len(found.centers)
    assert 1 < n < 64 and found.reached
    assert brute_sse(hist.colors, hist.weights, found.centers) <= limit
    sequence = palettecontrol.ward_sequence(hist, start, labels, 0, RGB, 1)
    below = sequence[n - 1]
    assert brute_sse(hist.colors, hist.weights, below) > limit
    assert len(found.evaluated) <= 9  # bisection: about log2(64) evaluations, one more try
    # and through the pipeline the PSNR reaches the target
    result = core.quantize(smooth_image(seed), QuantizeOptions(colors=64,
                                                                   target_psnr=(target, target)))
    assert result.psnr >= target and len(result.palette) < 64


def test_ward_merges_the_pair_that_raises_the_error_least():
    rng = np.random.default_rng(4)
    colors = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    hist = palettecontrol.WeightedColors(colors, rng.integers(1, 50, 40))
    centers = colors[:6]
    labels = nearest(colors, centers)
    coords = RGB.encode(colors)
    w = np.bincount(labels, weights=hist.weights, minlength=6)
    means = [np.average(coords[labels == j], axis=0, weights=hist.weights[labels == j])
             for j in range(6)]

    def within(members):  # weighted squared error of a cluster around its mean, by loops
        pts = [(coords[i], hist.weights[i]) for i in range(40) if labels[i] in members]
        total = sum(wt for _, wt in pts)
        mean = sum(p * wt for p, wt in pts) / total
        return sum(wt * float(((p - mean) ** 2).sum()) for p, wt in pts)

    rise = {(a, b): within({a, b}) - within({a}) - within({b})
            for a in range(6) for b in range(a + 1, 6)}
    a, b = min(rise, key=rise.get)
    merged = (w[a] * means[a] + w[b] * means[b]) / (w[a] + w[b])
    five = palettecontrol.ward_sequence(hist, centers, labels, 0, RGB, 5)[5]
    expected = {tuple(r) for r in RGB.decode(np.array([m for j, m in enumerate(means)
                                                       if j not in (a, b)] + [merged]))}
    assert {tuple(r) for r in five.tolist()} == expected


def test_target_cli_names_reports_and_exit_99(tmp_path):
    Image.fromarray(smooth_image(2)).save(tmp_path / "in.png")
    done = run("--target-psnr", "30-31", "--json", "-v", "--out-dir", str(tmp_path / "out"),
               str(tmp_path / "in.png"))
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    n = record["k"]
    assert 2 <= n < 256 and record["colors"] == n and record["psnr"] >= 30
    assert record["output"].endswith(f"in-{n}c.png") and (tmp_path / "out" / f"in-{n}c.png"
                                                          ).exists()
    assert "--target-psnr 30-31" in done.stderr.decode()
    missed = run("--target-psnr", "60", "-k", "4", "-o", str(tmp_path / "low.png"),
                 str(tmp_path / "in.png"))
    assert missed.returncode == 99
    assert "quality too low" in missed.stderr.decode() and not (tmp_path / "low.png").exists()


# --- pinned colors --------------------------------------------------------------------------


PINS = ((255, 0, 0), (0, 0, 255), (250, 250, 250))


def test_pinned_colors_are_exact_and_no_worse_than_fit_then_swap():
    image = smooth_image(5)
    k = 8
    result = core.quantize(image, QuantizeOptions(colors=k, keep=PINS))
    colors = {tuple(c) for c in result.palette.colors.tolist()}
    assert len(result.palette) == k and set(PINS) <= colors
    unpinned = [c for c, n in zip(result.palette.colors.tolist(), result.palette.counts,
                                  strict=True) if tuple(c) not in PINS]
    assert len(unpinned) == k - len(PINS)
    assert all(n > 0 for c, n in zip(result.palette.colors.tolist(), result.palette.counts,
                                     strict=True) if tuple(c) not in PINS)
    hist = hist_of(image)
    swapped = palettecontrol.swap(fit.fit_centers(hist.colors, hist.weights, k, seed=0,
                                                  space=RGB), np.array(PINS, np.uint8), RGB)
    assert (result.mse * hist.weights.sum() * 3
            <= brute_sse(hist.colors, hist.weights, swapped))


def test_pins_with_transparency_keep_the_transparent_entry_first():
    image = np.dstack([smooth_image(6), np.full((48, 64), 255, np.uint8)])
    image[:10, :, 3] = 0
    result = core.quantize(image, QuantizeOptions(colors=6, keep=PINS[:2]))
    assert result.palette.colors[0, 3] == 0 and len(result.palette) == 6
    assert {(255, 0, 0, 255), (0, 0, 255, 255)} <= {tuple(c) for c in
                                                     result.palette.colors.tolist()}


def test_keep_syntax():
    from colorquant.options import parse_colors

    assert parse_colors("#ff0000 0,255,0;0000ff") == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert parse_colors("#ff0000,#00ff00") == [(255, 0, 0), (0, 255, 0)]
    with pytest.raises(ValueError, match="300"):
        parse_colors("300,0,0")


def test_keep_cli_errors_and_keep_file(tmp_path):
    Image.fromarray(smooth_image(7)).save(tmp_path / "in.png")
    bad = run("--keep", "#12345g", "-o", str(tmp_path / "a.png"), str(tmp_path / "in.png"))
    assert bad.returncode == 2 and "#12345g" in bad.stderr.decode()
    many = run("-k", "2", "--keep", "#000000 #ffffff #ff0000", "-o", str(tmp_path / "a.png"),
               str(tmp_path / "in.png"))
    assert many.returncode == 2 and "3 colors to keep" in many.stderr.decode()
    assert not (tmp_path / "a.png").exists()
    (tmp_path / "pins.gpl").write_text("GIMP Palette\n255 0 0 red\n0 0 255 blue\n")
    done = run("-k", "5", "--keep-file", str(tmp_path / "pins.gpl"), "--json", "-o",
               str(tmp_path / "b.png"), str(tmp_path / "in.png"))
    assert done.returncode == 0, done.stderr
    palette = [p["color"] for p in json.loads(done.stdout)["palette"]]
    assert len(palette) == 5 and {"#ff0000", "#0000ff"} <= set(palette)


def test_target_name_from_stdin_and_no_clobber_on_the_final_name(tmp_path):
    Image.fromarray(smooth_image(8)).save(tmp_path / "in.png")
    data = (tmp_path / "in.png").read_bytes()
    first = run("-", "--target-psnr", "28", "--out-dir", str(tmp_path / "out"), stdin=data)
    assert first.returncode == 0, first.stderr
    [written] = list((tmp_path / "out").iterdir())
    assert written.name.startswith("stdin-") and written.name != "stdin-256c.png"
    again = run("-", "--target-psnr", "28", "--out-dir", str(tmp_path / "out"),
                "--no-clobber", stdin=data)
    assert again.returncode == 15 and f"{written}: exists" in again.stderr.decode()


def test_pins_with_a_target_stay_and_the_target_holds():
    image = smooth_image(9)
    result = core.quantize(image, QuantizeOptions(colors=64, keep=PINS,
                                                      target_psnr=(26.0, 26.0)))
    assert result.psnr >= 26 and len(result.palette) < 64
    assert set(PINS) <= {tuple(c) for c in result.palette.colors.tolist()}
