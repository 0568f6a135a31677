"""Hostile palette files are refused in bounded time and memory, before any image is written.

Each case runs the real command and measures its peak memory (``conftest.run_peak``), so a
reader that loads the whole file shows up as a peak of hundreds of megabytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from colorquant import palettefile
from tests.conftest import COMMAND, run_peak

#: Peak memory allowed to a refused run: the command with numpy and Pillow loaded is ~100 MB;
#: reading any of these files whole would add from 500 MB (the 1 GB file) to several GB.
PEAK_MB = 250

def refuse(tmp_path: Path, small_png: Path, palette: Path, message: str) -> None:
    out = tmp_path / "out.png"
    proc, peak = run_peak(COMMAND, small_png, "--palette", palette, "-o", out)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert message in lines[0]
    assert str(palette) in lines[0]
    assert not out.exists()
    assert peak < PEAK_MB, f"peak memory {peak:.0f} MB"


def test_a_1_gb_txt_is_refused_unread(tmp_path, small_png):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as handle:  # sparse: 1 GB of zero bytes that take no disk
        handle.truncate(1 << 30)
    refuse(tmp_path, small_png, path, "1,073,741,824 bytes, over the limit")


def test_a_json_of_a_million_entries_is_refused(tmp_path, small_png):
    path = tmp_path / "million.json"
    path.write_text(json.dumps({"colors": ["#102030"] * 1_000_000}))
    refuse(tmp_path, small_png, path, "over the limit of 1,048,576 bytes")


def test_a_million_entries_under_the_size_limit_are_refused_by_count(tmp_path):
    """Short entries fit under the byte limit; the count is checked before each is parsed."""
    path = tmp_path / "many.json"
    path.write_text("[" + ",".join(["0"] * 400_000) + "]")
    assert path.stat().st_size < palettefile.MAX_TEXT_BYTES
    with pytest.raises(palettefile.PaletteError, match="400,000 colors, a palette holds"):
        palettefile.read_palette(path)


def test_deeply_nested_json_is_refused(tmp_path, small_png):
    path = tmp_path / "deep.json"
    path.write_text("[" * 500_000 + "]" * 500_000)
    refuse(tmp_path, small_png, path, "nested too deeply")


def test_a_gpl_with_a_huge_line_is_refused(tmp_path, small_png):
    path = tmp_path / "huge-line.gpl"
    path.write_text("GIMP Palette\n0 0 0 " + "x" * 50_000_000 + "\n")
    refuse(tmp_path, small_png, path, "over the limit of 1,048,576 bytes")


@pytest.mark.parametrize("ext", [".gpl", ".txt"])
def test_a_long_line_under_the_size_limit_is_refused(tmp_path, ext):
    path = tmp_path / f"long{ext}"
    path.write_text("GIMP Palette\n0 0 0 " + "x" * 10_000 + "\n" if ext == ".gpl"
                    else "#000000 ; " + "x" * 10_000 + "\n")
    with pytest.raises(palettefile.PaletteError, match=r"line [12] has 10,0.. characters"):
        palettefile.read_palette(path)


def test_a_pipe_is_read_only_up_to_the_limit(tmp_path):
    """A FIFO has no size to check first: the reader stops after the limit all the same."""
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys\n"
        "with open(sys.argv[1], 'wb') as f:\n"
        "    try:\n"
        "        for _ in range(4096): f.write(b'#000000\\n' * 8192)\n"  # 256 MB
        "    except BrokenPipeError: pass\n"), str(path)], stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(palettefile.PaletteError, match="more than 1,048,576 bytes"):
            palettefile.read_palette(path)
    finally:
        writer.kill()
        writer.wait()


def test_the_largest_real_palettes_fit_the_limits(tmp_path):
    """256 colors with long names and counts, in every text format, are far under the limits."""
    import numpy as np

    from colorquant.palette import Palette

    rng = np.random.default_rng(0)
    palette = Palette(rng.integers(0, 256, (256, 4), dtype=np.uint8),
                      rng.integers(10**17, 10**18, 256))
    for ext in (".json", ".txt", ".hex"):
        path = tmp_path / f"p{ext}"
        palettefile.write_palette(palette, path)
        assert path.stat().st_size * 50 < palettefile.MAX_TEXT_BYTES
        assert np.array_equal(palettefile.read_palette(path).colors, palette.colors)


def test_a_palette_image_with_many_colors_is_refused_after_one_band(tmp_path, small_png):
    """4000×4000 pixels, with 300 colors in the first row: the reader stops in the first band
    of rows instead of sorting all 16 million pixels (which takes several hundred MB)."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((4000, 4000, 3), np.uint8)
    pixels[0, :300, 0] = np.arange(300) % 256
    pixels[0, :300, 1] = np.arange(300) // 256
    path = tmp_path / "many.png"
    Image.fromarray(pixels).save(path)
    refuse(tmp_path, small_png, path, "more than 256 colors")


def test_a_palette_image_over_the_pixel_limit_is_refused(tmp_path):
    from PIL import Image

    path = tmp_path / "big.gif"
    Image.new("P", (4001, 4000)).save(path)
    with pytest.raises(palettefile.PaletteError, match="16,000,000 pixels for a palette image"):
        palettefile.read_palette(path)


@pytest.mark.parametrize(("counts", "message"), [
    ("1" * 5000, "a number too long"),  # Python refuses int() of over 4,300 digits
    (str(2**70), "non-negative integers"),  # beyond int64
    ("true", "non-negative integers"),
])
def test_json_counts_beyond_any_image_are_refused(tmp_path, counts, message):
    path = tmp_path / "p.json"
    path.write_text('{"colors": ["#000000"], "counts": [' + counts + "]}")
    with pytest.raises(palettefile.PaletteError, match=message):
        palettefile.read_palette(path)
