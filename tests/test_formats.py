"""The table of output formats: every choice of the command has a row, and every row's facts
hold end to end (the real command writes a file that Pillow reads back as the row says)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from colorquant import cli, formats
from colorquant.errors import OutputError
from tests.conftest import run

DPI = (150.0, 150.0)


def test_every_format_choice_and_extension_has_a_row():
    option = next(p for p in cli.cli.params if p.name == "fmt")
    assert sorted(option.type.choices) == sorted(formats.CHOICES)
    for choice in option.type.choices:
        row = formats.get(formats.output_format("x", choice))
        assert row.choice == choice
        for ext in row.extensions:
            assert formats.output_format(f"out{ext.upper()}") == row.name
            assert formats.output_format("x", ext.lstrip(".")) == row.name
    names = [row.name for row in formats.TABLE]
    assert len(set(names)) == len(names)
    assert formats.output_format("-") == "PNG"
    with pytest.raises(OutputError, match="unknown output format 'xyz'"):
        formats.output_format("x.png", "xyz")


@pytest.fixture(scope="module")
def animation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-frame APNG with partial transparency, an RGB ICC profile and a resolution."""
    rng = np.random.default_rng(5)
    frames = []
    for shift in (0, 40):
        rgba = rng.integers(0, 6, (24, 32, 4), dtype=np.uint8) * 40 + shift
        rgba[..., 3] = 255
        rgba[:4, :, 3] = 0
        rgba[4:8, :, 3] = 128
        frames.append(Image.fromarray(rgba, "RGBA"))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path_factory.mktemp("formats") / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[100, 100],
                   loop=0, icc_profile=icc, dpi=DPI)
    return path


@pytest.mark.parametrize("row", formats.TABLE, ids=lambda row: row.name)
def test_every_row_holds_end_to_end(row: formats.OutputFormat, animation: Path,
                                    tmp_path: Path) -> None:
    out = tmp_path / f"out{row.extensions[-1]}"
    done = run(animation, "-k", "8", "-o", out)
    assert done.returncode == 0, done.stderr
    messages = done.stderr.decode()
    assert ("holds one frame" in messages) is not row.multi_frame
    assert ("cannot store a palette" in messages) is row.lossy
    assert ("keeps no transparency" in messages) is (row.alpha == "none")
    assert ("alpha cut at 50%" in messages) is (row.alpha == "binary")
    with Image.open(out) as image:
        assert image.format == row.name
        assert getattr(image, "n_frames", 1) == (2 if row.multi_frame else 1)
        assert bool(image.info.get("icc_profile")) is row.icc
        assert (image.info.get("dpi") is not None) is row.dpi
        stored_as_palette = image.mode == "P"
        rgba = np.asarray(image.convert("RGBA"))
    # the input has transparency: a palette that cannot hold it means RGBA pixels, unless
    # the format shows it over white (its palette blended)
    assert stored_as_palette is (row.palette and (row.palette_alpha or row.alpha == "none"))
    alpha = set(np.unique(rgba[..., 3]).tolist())
    partial = any(0 < a < 255 for a in alpha)
    if row.alpha == "full":
        assert 0 in alpha and partial
    elif row.alpha == "binary":
        assert alpha == {0, 255}
    else:
        assert alpha == {255}
    colors = len(np.unique(rgba.reshape(-1, 4), axis=0))
    assert (colors > 8) is row.lossy


@pytest.mark.parametrize("row", [r for r in formats.TABLE if r.max_side < 2**20],
                         ids=lambda row: row.name)
def test_the_largest_side_is_the_rows(row: formats.OutputFormat, tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    Image.new("RGB", (row.max_side + 1, 1), (9, 9, 9)).save(wide)
    out = tmp_path / f"out{row.extensions[0]}"
    done = run(wide, "-o", out)
    assert done.returncode == 1
    assert f"{row.name} holds at most {row.max_side:,} pixels per side" in done.stderr.decode()
    assert not out.exists()
    formats.check_output_size(row.name, (row.max_side, 1), str(out))
