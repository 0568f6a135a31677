import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import colorquant
from colorquant import QuantizeOptions, SaveOptions, quantize_image
from tests.conftest import palette_image, random_image


def nearest_brute_force(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    d = ((pixels[:, None, :].astype(np.int64) - palette[None].astype(np.int64)) ** 2).sum(2)
    return d.min(axis=1)


@pytest.mark.parametrize(("k", "seed"), [(2, 0), (5, 1), (16, 2), (64, 3), (256, 4)])
def test_every_pixel_gets_its_nearest_palette_color(k, seed):
    array = random_image(40, 50, seed=seed)
    result = quantize_image(array, k, seed=seed)
    indices = np.asarray(result.image).reshape(-1)
    colors = result.palette.colors
    out = colors[indices]
    flat = array.reshape(-1, 3)
    chosen = ((flat.astype(np.int64) - out) ** 2).sum(1)
    assert np.array_equal(chosen, nearest_brute_force(flat, colors))
    assert len(colors) <= k
    assert len(np.unique(out, axis=0)) == len(colors)  # every palette entry is used


def test_photo_is_exact_too(china):
    with Image.open(china) as im:
        array = np.asarray(im.convert("RGB").resize((120, 90)))
    result = quantize_image(array, 16)
    flat = array.reshape(-1, 3)
    out = result.palette.colors[np.asarray(result.image).reshape(-1)]
    assert np.array_equal(((flat.astype(np.int64) - out) ** 2).sum(1),
                          nearest_brute_force(flat, result.palette.colors))


@pytest.mark.parametrize("k", [2, 3, 16, 255, 256])
def test_image_with_exactly_k_colors_comes_back_unchanged(k):
    rng = np.random.default_rng(k)
    colors = np.unique(rng.integers(0, 256, (k * 3, 3), dtype=np.uint8), axis=0)[:k]
    assert len(colors) == k
    array = palette_image(colors, 37, 41, seed=k)
    result = quantize_image(array, k)
    assert result.n_colors == k
    assert np.array_equal(np.asarray(result.image.convert("RGB")), array)
    assert sorted(map(tuple, result.palette.colors.tolist())) == sorted(map(tuple, colors.tolist()))
    assert result.mse == 0 and result.psnr == float("inf")


def test_fewer_colors_than_k():
    array = palette_image(np.array([[0, 0, 0], [255, 255, 255], [1, 2, 3]]), 10, 10, seed=0)
    result = quantize_image(array, 16)
    assert result.n_colors == 3
    assert np.array_equal(np.asarray(result.image.convert("RGB")), array)


def test_palette_counts_and_order():
    array = random_image(30, 30, seed=9)
    result = quantize_image(array, 8)
    counts = result.palette.counts
    assert counts.sum() == 900
    assert np.all(np.diff(counts) <= 0)
    assert np.array_equal(np.bincount(np.asarray(result.image).reshape(-1), minlength=len(counts)),
                          counts)


def test_same_input_and_seed_same_result():
    array = random_image(64, 64, seed=11)
    a = quantize_image(array, 16, seed=3)
    b = quantize_image(Image.fromarray(array), 16, seed=3)
    assert a.palette == b.palette
    assert a.image.tobytes() == b.image.tobytes()


def test_quality_floor_on_sample(china):
    with Image.open(china) as im:
        result = quantize_image(im, 16)
    assert result.psnr >= 26.0
    assert result.n_colors == 16


def test_mse_matches_a_direct_computation():
    array = random_image(20, 25, seed=12)
    result = quantize_image(array, 6)
    out = np.asarray(result.image.convert("RGB")).astype(np.int64)
    assert result.mse == pytest.approx(np.mean((out - array) ** 2))


@pytest.mark.parametrize("bad", [
    {"k": 1}, {"k": 257}, {"k": 2.5}, {"seed": -1}, {"seed": 2**32},
])
def test_bad_arguments_raise_value_error(bad):
    k = bad.pop("k", 16)
    with pytest.raises(ValueError):
        quantize_image(random_image(4, 4, seed=0), k, **bad)


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 2), (4, 4, 5)])
def test_bad_arrays_raise_value_error(shape):
    with pytest.raises(ValueError):
        quantize_image(np.zeros(shape, dtype=np.uint8), 4)


def test_float_arrays_are_refused():
    with pytest.raises(ValueError):
        quantize_image(np.zeros((4, 4, 3), dtype=np.float64), 4)


@pytest.mark.parametrize(("bad", "message"), [
    ({"compress_level": 13}, "compress_level must be None or an integer from 0 to 12, got 13"),
    ({"compress_level": -1}, "compress_level must be None or an integer from 0 to 12, got -1"),
    ({"compress_level": True},
     "compress_level must be None or an integer from 0 to 12, got True"),
    ({"compress_level": 9.0},
     "compress_level must be None or an integer from 0 to 12, got 9.0"),
    ({"optimize": 3}, "optimize must be an integer from 0 to 2, got 3"),
    ({"optimize": 1.0}, "optimize must be an integer from 0 to 2, got 1.0"),
    ({"strip": 1}, "strip must be True or False, got 1"),
    ({"skip_if_larger": "yes"}, "skip_if_larger must be True or False, got 'yes'"),
])
def test_bad_save_options_raise_value_error_naming_the_value(bad, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SaveOptions(**bad)


def test_file_settings_are_not_quantization_options():
    """The deflate level, ``optimize``, ``strip`` and ``skip_if_larger`` decide only how the
    file is written: they are :class:`SaveOptions`, and the in-memory core never sees them."""
    for name in ("compress_level", "optimize", "strip", "skip_if_larger"):
        assert name in SaveOptions.__dataclass_fields__
        assert name not in QuantizeOptions.__dataclass_fields__
        with pytest.raises(TypeError):
            QuantizeOptions(**{name: SaveOptions.__dataclass_fields__[name].default})


def test_options_are_frozen():
    options = QuantizeOptions(colors=8)
    with pytest.raises(AttributeError):
        options.colors = 9  # type: ignore[misc]


def test_public_api_is_lazy_and_complete():
    code = (
        "import sys, colorquant; "
        "assert 'numpy' not in sys.modules, 'numpy imported eagerly'; "
        "assert callable(colorquant.quantize_image) and callable(colorquant.quantize_file); "
        "print(colorquant.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == colorquant.__version__


def test_no_fit_needed_imports_no_scikit_learn():
    code = (
        "import sys, numpy as np; from colorquant import quantize_image; "
        "a = np.zeros((8, 8, 3), np.uint8); a[::2] = 200; "
        "r = quantize_image(a, 4); assert r.n_colors == 2; "
        "print(any(m == 'sklearn' or m.startswith('sklearn.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_given_palette_is_kept_as_is():
    from colorquant import Palette, quantize

    palette = Palette([[255, 255, 255], [0, 0, 0], [255, 0, 0]], [0, 0, 0])
    array = random_image(16, 16, seed=13)
    result = quantize(array, QuantizeOptions(colors=3), palette=palette)
    assert np.array_equal(result.palette.colors, palette.colors)
    assert result.palette.total == 256
    out = palette.colors[np.asarray(result.image).reshape(-1)]
    flat = array.reshape(-1, 3)
    assert np.array_equal(((flat.astype(np.int64) - out) ** 2).sum(1),
                          nearest_brute_force(flat, palette.colors))


def test_merged_histograms_fit_one_palette():
    from colorquant import core, pixels

    a = core.prepare(random_image(10, 10, seed=14))
    b = core.prepare(random_image(12, 9, seed=15))
    merged = pixels.merge([a.histogram, b.histogram])
    assert merged.n_pixels == 100 + 108
    palette = core.fit_palette(merged, QuantizeOptions(colors=8))
    assert len(palette) <= 8 and palette.total == 208
    for prepared in (a, b):
        result = core.apply_palette(prepared, palette, QuantizeOptions(colors=8))
        assert np.array_equal(result.palette.colors, palette.colors)


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_exact_ties_do_not_depend_on_palette_order(order):
    from colorquant import Palette, quantize

    entries = np.array([[10, 0, 0], [0, 0, 0], [5, 5, 200]], dtype=np.uint8)
    palette = Palette(entries[order], [0, 0, 0])
    # (5, 0, 0) is exactly 25 away from both (0, 0, 0) and (10, 0, 0)
    array = np.array([[[5, 0, 0], [5, 0, 0]]], dtype=np.uint8)
    result = quantize(array, QuantizeOptions(colors=3), palette=palette)
    chosen = palette.colors[np.asarray(result.image).reshape(-1)]
    assert chosen.tolist() == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("shape", [(0, 4, 3), (4, 0, 3), (0, 0, 4)])
def test_empty_arrays_are_refused_with_a_clear_message(shape):
    with pytest.raises(ValueError, match="no pixels"):
        quantize_image(np.zeros(shape, dtype=np.uint8), 4)
