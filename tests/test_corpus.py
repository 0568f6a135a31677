"""Every file of the shared corpus either quantizes correctly or fails cleanly.

The sweep runs each file through the library in this process (a subprocess per file would
take minutes); a selection of the same files also goes through the real command. Each file
must either give an output of the same visible size (after its orientation), at most k colors
among visible pixels and its transparency kept, or fail with one line of reason and no file
left behind; bombs are refused from their headers (no wall-clock limits here: the benchmark
measures time).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from colorquant import ColorquantError, QuantizeOptions, files
from colorquant.errors import ImageTooLargeError
from tests.conftest import CORPUS, run

K = 16

#: Stored size → displayed size for the files whose orientation tag turns them a quarter.
TURNED = {"sharp-Landscape_6.jpg", "sharp-Portrait_8.jpg"}
#: Files that must be refused (hostile or broken), by name; everything else must succeed.
REFUSED = {
    "PngSuite.LICENSE", "PngSuite.README",
    "xc1n0g08.png", "xc9n2c08.png", "xcrn0g04.png", "xd0n2c08.png", "xd3n2c08.png",
    "xd9n2c08.png", "xdtn0g01.png", "xhdn0g08.png", "xlfn0g04.png", "xs1n0g01.png",
    "xs2n0g01.png", "xs4n0g01.png", "xs7n0g01.png",
    "fuzzdb-lottapixel.jpg", "fuzzdb-uber.gif", "gen-png_signature_only.png",
    "gen-random_bytes.jpg", "gen-text_renamed.png", "gen-zero_bytes.jpg", "gen-zero_bytes.png",
    "imagepng-x_issue_230.1.png", "imagepng-x_unexpected_eof.png", "libpng-bad_iCCP.png",
    "libpng-badadler.png", "libpng-empty_ancillary_chunks.png", "libpng-huge_iCCP_chunk.png",
    "ljt-monkey12.jpg", "pillow-broken.png", "pillow-decompression_bomb.gif",
    "pillow-decompression_bomb_extents.gif", "pillow-png_decompression_dos.png",
    "pillow-truncated_image.png", "pillow-truncated_jpeg.jpg", "pillow-zero_width.gif",
    "sharp-65536-uint32-limit.png", "sharp-corrupt-header.jpg", "sharp-giant-image.jpg",
    "sharp-truncated.jpg", "skimage-multipage_rgb.tif",
    "xcsn0g01.png", "libpng-badcrc.png",  # a bad CRC in IDAT (Pillow does not check it)
}
#: Decompression bombs: refused as too large, from the headers.
BOMBS = {"fuzzdb-lottapixel.jpg", "fuzzdb-uber.gif", "pillow-decompression_bomb.gif",
         "pillow-decompression_bomb_extents.gif", "sharp-65536-uint32-limit.png",
         "sharp-giant-image.jpg"}
#: Real-command runs: one of each kind of outcome.
VIA_CLI = ["gen-name with spaces & ünïcode.png", "gen-UPPERCASE_EXT.JPG",
           "gen-jpeg_content_named.png", "pillow-pil_sample_cmyk.jpg", "sharp-Landscape_6.jpg",
           "pillow-chi.gif", "imagepng-basic_f20.png", "sharp-animated-loop-3.webp",
           "libpng-gray-alpha-16.png", "sharp-full-transparent.png", "imagepng-broken_iccp.png",
           "fuzzdb-lottapixel.jpg", "fuzzdb-uber.gif", "sharp-65536-uint32-limit.png",
           "pillow-png_decompression_dos.png", "sharp-truncated.jpg", "gen-zero_bytes.png",
           "gen-text_renamed.png", "ljt-monkey12.jpg"]


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.glob("*/*") if p.is_file() and p.suffix != ".md")


FILES = _corpus_files()


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _source_alpha(src: Path) -> np.ndarray | bool | None:
    """Alpha of the source's first frame (stored orientation) by Pillow alone, None when it
    has none, False when Pillow cannot tell (16-bit color key: see its own test)."""
    with Image.open(src) as im:
        trns = im.info.get("transparency")
        if im.mode.startswith("I;16"):
            if not isinstance(trns, int):
                return None
            return np.where(np.asarray(im, dtype=np.int64) == trns, 0, 255).astype(np.uint8)
        if im.mode not in ("RGBA", "LA", "PA") and trns is None:
            return None
        if im.mode == "RGB" and isinstance(trns, tuple) and max(trns) > 255:
            return False
        return np.asarray(im.convert("RGBA"))[..., 3]


def check_output(src: Path, dst: Path, k: int = K) -> None:
    """The output has the source's upright size, ≤ k visible colors, and its transparency."""
    with Image.open(src) as im:
        size = im.size[::-1] if src.name in TURNED else im.size
    with Image.open(dst) as out:
        assert out.size == size
        frames = [np.asarray(f.convert("RGBA")) for f in ImageSequence.Iterator(out)]
    visible = np.concatenate([f[f[..., 3] > 0] for f in frames])
    if len(visible):
        assert len(np.unique(visible.view(np.uint32))) <= k
    alpha = _source_alpha(src)
    first = frames[0][..., 3]
    if alpha is False:
        return
    if alpha is None:
        if len(frames) == 1:
            assert first.min() == 255, "an opaque image got transparency"
        return
    if src.name.startswith("pillow-xmp_tags_orientation"):
        alpha = np.rot90(alpha, 2)
    assert np.array_equal(first == 0, alpha == 0), "fully transparent pixels moved"
    assert ((first > 0) == (alpha > 0)).all()


def test_corpus_lists_every_file(corpus):
    assert len(FILES) > 250
    names = {p.name for p in FILES}
    assert names >= REFUSED and set(VIA_CLI) <= names


@pytest.mark.parametrize("src", FILES, ids=_ids(FILES))
def test_corpus_file(src, corpus, tmp_path):
    dst = tmp_path / "out.png"
    warnings: list[str] = []
    try:
        result = files.quantize_file(src, dst, options=QuantizeOptions(colors=K),
                                        log=warnings.append)
    except ColorquantError as exc:
        assert src.name in REFUSED, f"refused: {exc}"
        message = str(exc)
        assert "\n" not in message and message.startswith(str(src))
        assert os.listdir(tmp_path) == []
        if src.name in BOMBS:  # refused from the header, before any pixel is decoded
            assert isinstance(exc, ImageTooLargeError)
    else:
        assert src.name not in REFUSED, "quantized a file that should be refused"
        assert result.n_colors <= K
        check_output(src, dst)
        assert os.listdir(tmp_path) == ["out.png"]


@pytest.mark.parametrize("name", VIA_CLI)
def test_corpus_file_via_command(name, corpus, tmp_path):
    src = corpus / "tricky" / name
    dst = tmp_path / "out.png"
    proc = run(src, "-k", str(K), "-o", dst)
    assert proc.stdout == b""
    if name in REFUSED:
        assert proc.returncode == 1
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {src}: ")
        assert os.listdir(tmp_path) == []
    else:
        assert proc.returncode == 0, proc.stderr.decode()
        check_output(src, dst)


@pytest.mark.parametrize(("name", "quarter"), [
    ("sharp-Landscape_6.jpg", Image.Transpose.ROTATE_270),
    ("sharp-Portrait_8.jpg", Image.Transpose.ROTATE_90),
    ("pillow-hopper_orientation_6.jpg", Image.Transpose.ROTATE_270),
    ("pillow-hopper_orientation_8.jpg", Image.Transpose.ROTATE_90),
    ("imagepng-F-exif-chunk-early.png", Image.Transpose.ROTATE_270),
    ("pillow-exif_imagemagick_orientation.png", Image.Transpose.ROTATE_180),
    ("pillow-xmp_tags_orientation.png", Image.Transpose.ROTATE_180),
])
def test_orientation_is_applied_and_dropped(name, quarter, corpus, tmp_path):
    src = corpus / "tricky" / name
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, options=QuantizeOptions(colors=64))
    with Image.open(src) as im:
        stored = np.asarray(im.convert("RGB"), dtype=np.float64)
        upright = np.asarray(im.convert("RGB").transpose(quarter), dtype=np.float64)
    with Image.open(dst) as out:
        assert "exif" not in out.info and not out.getexif()
        got = np.asarray(out.convert("RGB"), dtype=np.float64)
    assert got.shape == upright.shape
    assert np.abs(got - upright).mean() < 12
    if got.shape == stored.shape:
        assert np.abs(got - stored).mean() > 2 * np.abs(got - upright).mean()


def test_cmyk_jpegs_are_not_inverted(corpus, tmp_path):
    # The PIL sample: red lettering at the top-left corner, black at the bottom right.
    for name in ("pillow-pil_sample_cmyk.jpg", "pillow-tiff_strip_cmyk_jpeg.tif"):
        dst = tmp_path / f"{name}.png"
        files.quantize_file(corpus / "tricky" / name, dst, options=QuantizeOptions(colors=8))
        with Image.open(dst) as out:
            rgb = out.convert("RGB")
            r, g, b = rgb.getpixel((0, 0))
            assert r > 200 and g < 60 and b < 60
            assert max(rgb.getpixel((99, 99))) < 60


def test_cmyk_with_profile_is_converted_through_it(corpus, tmp_path):
    from PIL import ImageCms

    src = corpus / "tricky" / "sharp-Channel_digital_image_CMYK_color.jpg"
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, options=QuantizeOptions(colors=256))
    with Image.open(src) as im:
        profile = ImageCms.ImageCmsProfile(__import__("io").BytesIO(im.info["icc_profile"]))
        managed = ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"),
                                            outputMode="RGB")
        naive = np.asarray(im.convert("RGB"), dtype=np.float64)
    managed = np.asarray(managed, dtype=np.float64)
    with Image.open(dst) as out:
        assert "icc_profile" not in out.info  # a CMYK profile cannot describe the output
        got = np.asarray(out.convert("RGB"), dtype=np.float64)
    assert np.abs(got - managed).mean() < np.abs(got - naive).mean()


def test_sixteen_bit_gray_with_color_key(corpus, tmp_path):
    for name in ("pillow-i_trns.png",):
        src = corpus / "tricky" / name
        dst = tmp_path / "out.png"
        files.quantize_file(src, dst, options=QuantizeOptions(colors=16))
        with Image.open(src) as im:
            values = np.asarray(im, dtype=np.int64)
            key = im.info["transparency"]
        with Image.open(dst) as out:
            alpha = np.asarray(out.convert("RGBA"))[..., 3]
        assert np.array_equal(alpha == 0, values == key)


def test_sixteen_bit_rgb_color_key(corpus, tmp_path):
    src = corpus / "pngsuite" / "tbbn2c16.png"  # tRNS key 65535,65535,65535 on 16-bit RGB
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, options=QuantizeOptions(colors=16))
    with Image.open(src) as im:
        white = (np.asarray(im.convert("RGB")) == 255).all(axis=2)
    with Image.open(dst) as out:
        alpha = np.asarray(out.convert("RGBA"))[..., 3]
    assert white.any()
    assert np.array_equal(alpha == 0, white)


@pytest.mark.parametrize("name", ["pillow-chi.gif", "imagepng-basic_f20.png",
                                  "sharp-animated-loop-3.webp", "pillow-iss634.webp"])
@pytest.mark.parametrize("fmt", ["gif", "png", "webp"])
def test_corpus_animations_keep_their_frames(name, fmt, corpus, tmp_path):
    from colorquant import frames, imagefile

    src = corpus / "tricky" / name
    dst = tmp_path / f"out.{fmt}"
    files.quantize_file(src, dst, options=QuantizeOptions(colors=16))
    with imagefile.open_image(src, max_pixels=10**8) as source:
        decoded = frames.read(source)
    with Image.open(src) as im:
        loop = im.info.get("loop")
    with Image.open(dst) as out:
        shown = [np.asarray(f.convert("RGBA")) for f in ImageSequence.Iterator(out)]
        assert out.info.get("loop") == loop
    assert 1 < len(shown) <= len(decoded.images)
    colors = np.concatenate([f[f[..., 3] > 0] for f in shown]).view(np.uint32)
    assert len(np.unique(colors)) <= 16  # one palette for all frames
    # GIF stores hundredths of a second.
    slack = 10 * len(shown) if fmt == "gif" else 0
    assert abs(sum(decoded.durations or []) - _total_duration(dst)) <= slack


def _total_duration(path: Path) -> int:
    with Image.open(path) as im:
        total = 0
        for frame in ImageSequence.Iterator(im):
            frame.load()
            total += int(frame.info.get("duration", 0))
    return total


def test_frame_flood_is_refused_from_the_frame_count(corpus):
    # The limit is checked on the counted frames before any frame is decoded.
    with pytest.raises(ImageTooLargeError, match="40,000 frames, over the limit of 10,000"):
        files.quantize_file(corpus / "tricky" / "fuzzdb-uber.gif", "/nonexistent/x.png")
