"""Outputs as independent decoders read them: TIFF colormaps, PNG chunk CRCs, GIF delays, tRNS.

Each output is checked from its raw bytes (tags, chunks) and, where the tool is installed,
as libtiff and ImageMagick decode it (``.ci/run`` installs libtiff-tools).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import palette_image, run
from PIL import Image

COLORS = np.array([[255, 255, 255], [0, 0, 0], [200, 30, 90], [1, 128, 254]], dtype=np.uint8)


@pytest.fixture
def tiff_and_png(tmp_path) -> tuple[Path, Path]:
    """A two-page palette TIFF and a PNG of the same run's first page (exact colors)."""
    src = tmp_path / "in.gif"
    pages = [Image.fromarray(palette_image(COLORS, 20, 24, seed=s)) for s in (1, 2)]
    pages[0].save(src, save_all=True, append_images=pages[1:], duration=100)
    tif, png = tmp_path / "out.tif", tmp_path / "out.png"
    for out in (tif, png):
        proc = run(src, "-k", "4", "-o", out)
        assert proc.returncode == 0, proc.stderr
    return tif, png


def _png_pixels(png: Path) -> np.ndarray:
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def test_tiff_colormap_is_in_16_bits_full_scale(tiff_and_png):
    """Every page's ColorMap holds each 8-bit value × 257 (white is 65535), the PNG palette."""
    tif, png = tiff_and_png
    with Image.open(png) as image:
        palette = image.getpalette()
    with Image.open(tif) as image:
        assert image.n_frames == 2
        for page in range(2):
            image.seek(page)
            raw = image.tag_v2[320]
            n = len(raw) // 3
            red, green, blue = raw[:n], raw[n:2 * n], raw[2 * n:]
            colors = len(palette) // 3
            written = [v for i in range(colors) for v in (red[i], green[i], blue[i])]
            assert written == [257 * v for v in palette]
            assert 65535 in raw


@pytest.mark.parametrize("tool", ["tiff2rgba", "convert"])
def test_libtiff_and_imagemagick_decode_the_tiff_as_the_png(tiff_and_png, tool, tmp_path):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (the raw ColorMap test still runs)")
    tif, png = tiff_and_png
    if tool == "tiff2rgba":
        rgba = tmp_path / "rgba.tif"
        subprocess.run([tool, str(tif), str(rgba)], check=True, timeout=60)
        with Image.open(rgba) as image:
            decoded = np.asarray(image.convert("RGB"))
    else:
        out = subprocess.run([tool, f"{tif}[0]", "-depth", "8", "rgb:-"], check=True,
                             capture_output=True, timeout=60).stdout
        decoded = np.frombuffer(out, dtype=np.uint8).reshape(_png_pixels(png).shape)
    np.testing.assert_array_equal(decoded, _png_pixels(png))
