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


def _is_installed(tool: str) -> bool:
    """Whether ``tool`` is on the PATH; for ``convert``, ImageMagick's own (some machines
    have a stand-in of that name that only converts PNG)."""
    if shutil.which(tool) is None:
        return False
    if tool != "convert":
        return True
    probe = subprocess.run([tool, "-version"], capture_output=True, text=True, check=False)
    return probe.stdout.startswith("Version: ImageMagick")  # the stand-in names it too


@pytest.mark.parametrize("tool", ["tiff2rgba", "convert"])
def test_libtiff_and_imagemagick_decode_the_tiff_as_the_png(tiff_and_png, tool, tmp_path):
    if not _is_installed(tool):  # .ci/run installs both
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


def test_gif_delays_keep_the_total_duration(tmp_path):
    """20 frames of 75 ms (an APNG, which stores milliseconds) become a GIF, which stores
    centiseconds: every frame starts within 5 ms of its time and the total stays 1.5 s."""
    src = tmp_path / "in.png"
    frames = [Image.fromarray(palette_image(COLORS, 12, 10, seed=s)) for s in range(20)]
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=75, loop=0)
    out = tmp_path / "out.gif"
    proc = run(src, "-k", "4", "-o", out)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as image:
        delays = []
        for index in range(image.n_frames):
            image.seek(index)
            delays.append(image.info["duration"])
    assert len(delays) == 20
    assert sum(delays) == 1500
    starts = np.cumsum([0, *delays[:-1]])
    assert np.all(np.abs(starts - 75 * np.arange(20)) <= 5), delays


def _chunks(path: Path) -> dict[bytes, bytes]:
    data = path.read_bytes()
    chunks, at = {}, 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.setdefault(data[at + 4:at + 8], data[at + 8:at + 8 + length])
        at += 12 + length
    return chunks


@pytest.mark.parametrize("partial", [False, True])
def test_trns_has_no_trailing_opaque_entries(tmp_path, partial):
    """tRNS ends at the last palette entry that is not opaque; the image decodes the same."""
    rgba = np.full((24, 16, 4), 255, dtype=np.uint8)
    rgba[:6, :, 3] = 0
    rgba[6:, :, :3] = np.repeat(COLORS[:3], 6, axis=0)[:, None, :]
    if partial:
        rgba[20:, :, 3] = 128
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(rgba, "RGBA").save(src)
    proc = run(src, "-k", "8", "-o", out)
    assert proc.returncode == 0, proc.stderr
    trns, plte = _chunks(out)[b"tRNS"], _chunks(out)[b"PLTE"]
    with Image.open(out) as image:
        indices = np.asarray(image)
        decoded = np.asarray(image.convert("RGBA"))[..., 3]
    np.testing.assert_array_equal(decoded, rgba[..., 3])
    alpha = {int(i): int(decoded[indices == i][0]) for i in np.unique(indices)}
    last = max(i for i, a in alpha.items() if a < 255)
    assert len(trns) == last + 1 < len(plte) // 3  # entries after the last one are opaque
    assert all(trns[i] == a for i, a in alpha.items() if i <= last)


def test_png_with_a_damaged_idat_is_refused(tmp_path, small_png):
    """One flipped byte inside IDAT (the CRC no longer matches): refused as libpng and
    pngcheck refuse it, although Pillow would decode the wrong pixels."""
    data = bytearray(small_png.read_bytes())
    at = data.find(b"IDAT") + 4 + 20
    data[at] ^= 0x01
    src = tmp_path / "damaged.png"
    src.write_bytes(bytes(data))
    out = tmp_path / "out.png"
    proc = run(src, "-o", out)
    assert proc.returncode == 1
    assert proc.stderr.decode() == (f"Error: {src}: corrupt PNG file (bad CRC in the 'IDAT' "
                                    f"chunk at byte {data.find(b'IDAT') - 4:,})\n")
    assert not out.exists()
