"""Palette files: every format round-trips colors and order exactly; bad files fail clearly."""

import json

import numpy as np
import pytest
from PIL import Image

from colorquant.errors import PaletteError
from colorquant.palette import Palette
from colorquant.palettefile import read_palette, write_palette

FORMATS = [".gpl", ".json", ".txt", ".hex", ".png", ".gif", ".webp", ".tif", ".bmp"]


def random_palette(k: int, seed: int, channels: int = 3) -> Palette:
    rng = np.random.default_rng(seed)
    colors = np.unique(rng.integers(0, 256, (k * 2, channels), dtype=np.uint8), axis=0)[:k]
    rng.shuffle(colors)  # not sorted: the file must keep this order
    return Palette(colors, rng.integers(1, 1000, k))


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("k", [1, 2, 16, 256])
def test_round_trip_keeps_colors_and_order(tmp_path, ext, k):
    palette = random_palette(k, seed=k)
    path = tmp_path / f"pal{ext}"
    write_palette(palette, path)
    back = read_palette(path)
    assert np.array_equal(back.colors, palette.colors)
    if ext == ".json":
        assert back == palette  # counts too
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("ext", [".json", ".txt", ".hex", ".png", ".webp", ".tif"])
def test_round_trip_with_alpha(tmp_path, ext):
    palette = random_palette(20, seed=3, channels=4)
    colors = palette.colors.copy()
    colors[:, 3] = np.maximum(colors[:, 3], 1)  # fully transparent colors collapse to one key
    palette = Palette(colors, palette.counts)
    path = tmp_path / f"pal{ext}"
    write_palette(palette, path)
    assert np.array_equal(read_palette(path).colors, palette.colors)


@pytest.mark.parametrize("ext", [".json", ".txt", ".png", ".webp", ".tif"])
def test_transparent_entry_keeps_its_rgb(tmp_path, ext):
    """A fitted palette's transparent entry (RGB from --transparent-color) round-trips."""
    colors = np.array([[255, 0, 255, 0], [10, 20, 30, 255], [40, 50, 60, 128]], np.uint8)
    palette = Palette(colors, np.array([5, 3, 1]))
    path = tmp_path / f"pal{ext}"
    write_palette(palette, path)
    assert read_palette(path).colors.tolist() == colors.tolist()


@pytest.mark.parametrize("ext", [".gpl", ".gif", ".bmp"])
def test_alpha_refused_where_the_format_cannot_hold_it(tmp_path, ext):
    path = tmp_path / f"p{ext}"
    with pytest.raises(PaletteError, match="transparency") as caught:
        write_palette(random_palette(4, seed=1, channels=4), path)
    assert str(caught.value).startswith(f"{path}: ")  # one "Error: <file>: <reason>" line
    assert list(tmp_path.iterdir()) == []


def test_reads_files_written_by_hand(tmp_path):
    gpl = tmp_path / "a.gpl"
    gpl.write_text("GIMP Palette\nName: hand\nColumns: 4\n# comment\n"
                   "255   0   0\tRed\n  0 128 255 Sky blue\n\n 0 0 0\n")
    assert read_palette(gpl).hex() == ["#ff0000", "#0080ff", "#000000"]
    txt = tmp_path / "a.hex"
    txt.write_text("ff0000\n#00FF00\n\n; comment\n0000ff80\n")
    # one color with alpha makes every color RGBA (opaque where not given)
    assert read_palette(txt).hex() == ["#ff0000ff", "#00ff00ff", "#0000ff80"]
    txt.write_text("#ff0000 ; red\n00ff00// green\n")  # a comment may follow a color
    assert read_palette(txt).hex() == ["#ff0000", "#00ff00"]
    js = tmp_path / "a.json"
    js.write_text(json.dumps(["#010203", "#040506"]))
    assert read_palette(js).hex() == ["#010203", "#040506"]


def test_image_palette_is_its_colors_in_order_of_appearance(tmp_path):
    swatch = np.zeros((2, 3, 3), dtype=np.uint8)
    swatch[0] = [[9, 9, 9], [200, 0, 0], [9, 9, 9]]
    swatch[1] = [[0, 0, 200], [200, 0, 0], [0, 0, 200]]
    path = tmp_path / "swatch.png"
    Image.fromarray(swatch).save(path)
    palette = read_palette(path)
    assert palette.hex() == ["#090909", "#c80000", "#0000c8"]
    assert palette.counts.tolist() == [2, 2, 2]


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("p.gpl", "not a palette\n1 2 3\n", "GIMP Palette"),
    ("p.gpl", "GIMP Palette\n1 2 300\n", "line 2"),
    ("p.json", "{", "not valid JSON"),
    ("p.json", '{"colors": ["#12345"]}', "#rrggbb"),
    ("p.json", '{"colors": ["#123456"], "counts": [-1]}', "counts"),
    ("p.txt", "#ff0000\nred\n", "line 2"),
    ("p.txt", "\n\n", "no colors"),
    ("p.txt", "\n".join(f"#{i:06x}" for i in range(257)), "at most 256"),
    ("p.xyz", "#ff0000", "unknown palette extension"),
    ("missing.gpl", None, "no such file"),
])
def test_bad_palette_files(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(PaletteError, match=needle):
        read_palette(path)


def test_image_with_too_many_colors_is_refused(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), np.uint8)).save(path)
    with pytest.raises(PaletteError, match="at most 256"):
        read_palette(path)


PAINT_NET_HEADER = ("; paint.net Palette File\n"
                    "; Lines that start with a semicolon are comments\n"
                    "; Colors are written as 8-digit hexadecimal numbers: aarrggbb\n")


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_paint_net_palettes_are_alpha_first(tmp_path, bom):
    path = tmp_path / "pdn.txt"
    path.write_text(bom + PAINT_NET_HEADER + "FFFF0000\nFF00FF00\n800000FF\n", encoding="utf-8")
    assert read_palette(path).hex() == ["#ff0000ff", "#00ff00ff", "#0000ff80"]
    path.write_text(bom + PAINT_NET_HEADER + "FFFF0000\nFF00FF00\n", encoding="utf-8")
    assert read_palette(path).hex() == ["#ff0000", "#00ff00"]  # all opaque: an RGB palette
    path.write_text("; my colors\nFF000080\n", encoding="utf-8")  # not Paint.NET: rrggbbaa
    assert read_palette(path).hex() == ["#ff000080"]
