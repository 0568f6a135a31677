"""The library in a notebook: short reprs, pictures from ``_repr_png_``, and a public API that
is what ``__all__`` lists, typed and documented."""

from __future__ import annotations

import inspect
import io
import re
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import colorquant
from colorquant import (
    ColorSpace,
    Dither,
    FitMethod,
    Palette,
    QuantizeOptions,
    QuantizeResult,
    SaveOptions,
    quantize_image,
)
from colorquant import palette as palette_module
from tests.conftest import random_image

ROOT = Path(__file__).resolve().parent.parent


def decode(png: bytes) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.fixture(scope="module")
def result() -> QuantizeResult:
    return quantize_image(Image.open(ROOT / "sample_images" / "china.jpg"), 16)


# --- reprs ----------------------------------------------------------------------------------

def test_palette_repr_is_one_short_line():
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    counts = np.arange(256, 0, -1)
    text = repr(Palette(colors, counts))
    assert "\n" not in text and len(text) <= 120 and "array" not in text
    first = "#" + bytes(colors[0]).hex()
    assert text.startswith(f"Palette(256 RGB colors: {first} {256 / counts.sum():.1%}, ")
    assert text.endswith(", … 252 more)")


def test_palette_repr_without_counts_and_with_alpha():
    colors = np.array([[255, 0, 0, 255], [0, 0, 255, 128]], dtype=np.uint8)
    text = repr(Palette(colors, np.zeros(2)))
    assert text == "Palette(2 RGBA colors: #ff0000ff, #0000ff80)"


def test_options_repr_names_what_differs_and_evaluates_back():
    assert repr(QuantizeOptions()) == "QuantizeOptions()"
    options = QuantizeOptions(colors=32, seed=1, space=ColorSpace.LAB, dither=Dither.FS,
                              fit_method=FitMethod.LLOYD, keep=((230, 0, 18),),
                              target_psnr=(30.0, 34.0), dither_strength=0.5)
    text = repr(options)
    assert text == ("QuantizeOptions(colors=32, seed=1, fit_method=FitMethod.LLOYD, "
                    "space=ColorSpace.LAB, target_psnr=(30.0, 34.0), keep=((230, 0, 18),), "
                    "dither=Dither.FS, dither_strength=0.5)")
    names = {"QuantizeOptions": QuantizeOptions, "ColorSpace": ColorSpace, "Dither": Dither,
             "FitMethod": FitMethod}
    assert eval(text, names) == options


def test_save_options_repr_names_what_differs_and_evaluates_back():
    assert repr(SaveOptions()) == "SaveOptions()"
    save = SaveOptions(compress_level=3, optimize=1, strip=True)
    assert repr(save) == "SaveOptions(compress_level=3, optimize=1, strip=True)"
    assert eval(repr(save), {"SaveOptions": SaveOptions}) == save


def test_result_repr_is_short_and_does_not_measure_delta_e(result):
    text = repr(result)
    assert text == (f"QuantizeResult(640x427 P image, 16 colors, MSE {result.mse:.3f}, "
                    f"PSNR {result.psnr:.2f} dB)")
    assert len(text) <= 100

    def costly() -> float:
        raise AssertionError("the repr measured ΔE2000")

    lazy = QuantizeResult(result.image, result.palette, 0.0, float("inf"),
                          measure_delta_e=costly)
    assert repr(lazy) == "QuantizeResult(640x427 P image, 16 colors, MSE 0.000, PSNR inf dB)"


# --- pictures -------------------------------------------------------------------------------

def test_result_displays_as_its_image(result):
    shown = decode(result._repr_png_())
    assert shown.size == result.image.size
    assert np.array_equal(np.asarray(shown.convert("RGB")),
                          np.asarray(result.image.convert("RGB")))


def test_result_with_transparency_displays_with_it():
    rgba = random_image(20, 30, seed=4, channels=4)
    rgba[:5, :, 3] = 0
    result = quantize_image(rgba, 8)
    shown = np.asarray(decode(result._repr_png_()).convert("RGBA"))
    assert np.array_equal(shown, np.asarray(result.image.convert("RGBA")))
    assert (shown[:5, :, 3] == 0).all()


def test_palette_displays_as_swatches(result):
    palette = result.palette
    shown = decode(palette._repr_png_())
    side = palette_module.SWATCH
    assert shown.size == (16 * side, side)
    pixels = np.asarray(shown.convert("RGB"))
    for i, color in enumerate(palette.colors):
        # every pixel of a swatch is its color
        cell = pixels[:, i * side:(i + 1) * side]
        assert (cell == color).all(), i


def test_palette_swatches_wrap_and_keep_alpha():
    side, per_row = palette_module.SWATCH, palette_module.SWATCHES_PER_ROW
    rng = np.random.default_rng(2)
    colors = rng.integers(0, 256, (20, 4), dtype=np.uint8)
    shown = np.asarray(decode(Palette(colors, np.ones(20))._repr_png_()).convert("RGBA"))
    assert shown.shape == (2 * side, per_row * side, 4)
    for i, color in enumerate(colors):
        row, col = divmod(i, per_row)
        assert (shown[row * side + side // 2, col * side + side // 2] == color).all()
    # the end of the last row is empty (transparent), not a color of the palette
    assert (shown[side:, 4 * side:, 3] == 0).all()
    rgb = decode(Palette(colors[:20, :3], np.ones(20))._repr_png_())
    assert np.asarray(rgb.convert("RGBA"))[side:, 4 * side:, 3].max() == 0
    assert (np.asarray(rgb.convert("RGBA"))[:side, :, 3] == 255).all()


# --- the public API -------------------------------------------------------------------------

PUBLIC = [name for name in colorquant.__all__ if name != "__version__"]


def test_every_public_name_resolves_and_is_documented():
    library = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    for name in PUBLIC:
        assert getattr(colorquant, name) is not None
        assert f"`{name}" in library or f" {name}" in library, name
    with pytest.raises(AttributeError):  # the package serves its public names only
        colorquant.__getattr__("BatchRun")


@pytest.mark.parametrize("name", [n for n in PUBLIC if inspect.isfunction(
    getattr(colorquant, n))])
def test_public_functions_are_typed_and_numpydoc(name):
    function = getattr(colorquant, name)
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function)
    untyped = [p for p in signature.parameters.values()
               if p.kind not in (p.VAR_KEYWORD,) and p.name not in hints]
    assert untyped == [] and "return" in hints
    doc = inspect.getdoc(function) or ""
    assert re.search(r"^Parameters\n-{10}$", doc, re.M), doc
    documented = re.findall(r"^\**(\w+)(?:, (\w+))*(?: :|$)", doc, re.M)
    named = {n for group in documented for n in group if n}
    assert [p for p in signature.parameters if p not in named] == []
    if hints["return"] is not type(None):
        assert re.search(r"^Returns\n-{7}$", doc, re.M), doc


@pytest.mark.parametrize("name", ["Palette", "QuantizeOptions", "QuantizeResult", "SaveOptions"])
def test_public_classes_document_their_fields(name):
    cls = getattr(colorquant, name)
    doc = inspect.getdoc(cls) or ""
    assert re.search(r"^(Parameters|Attributes)\n-+$", doc, re.M)
    fields = [f for f in cls.__dataclass_fields__ if f != "measure_delta_e"]
    described = " ".join(re.findall(r"^([\w, ]+) :", doc, re.M))
    assert [f for f in fields if f not in described] == []
