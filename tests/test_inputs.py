"""Every kind of input and output, on small images generated here with Pillow's own encoders."""

from __future__ import annotations

import contextlib
import io as stdio
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageSequence

from colorquant import InputError, QuantizeOptions, core, encode, files, frames, imagefile
from colorquant.errors import ImageTooLargeError
from colorquant.options import parse_rgb
from tests.conftest import palette_image, random_image, run

OPAQUE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [240, 240, 240]], np.uint8)


def _rgba(out: Path | Image.Image) -> np.ndarray:
    im = Image.open(out) if isinstance(out, Path) else out
    return np.asarray(im.convert("RGBA"))


def _transparent_image(seed: int = 0) -> np.ndarray:
    """40x40 RGBA: random opaque colors, a fully transparent block with random RGB, and a
    block of partly transparent pixels."""
    rgba = random_image(40, 40, seed, channels=4)
    rgba[..., 3] = 255
    rgba[:10, :, 3] = 0
    rgba[10:15, :, 3] = 100
    return rgba


def _ihdr(path: Path) -> tuple[int, int]:
    """Bit depth and color type of a PNG."""
    data = path.read_bytes()
    return data[24], data[25]


# ---------------------------------------------------------------- transparency


def test_transparent_pixels_get_one_entry_first_with_the_chosen_rgb(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_transparent_image(), "RGBA").save(src)
    dst = tmp_path / "out.png"
    proc = run(src, "-k", "8", "-o", dst, "--transparent-color", "#ff00ff")
    assert proc.returncode == 0, proc.stderr
    with Image.open(dst) as out:
        assert out.mode == "P" and "transparency" in out.info
        rgb = np.array(out.getpalette(), np.uint8).reshape(-1, 3)
        trns = np.frombuffer(out.info["transparency"], np.uint8)
        alpha = np.full(len(rgb), 255, np.uint8)
        alpha[: len(trns)] = trns
        palette = np.column_stack([rgb, alpha])
        indices = np.asarray(out)
    assert len(np.unique(indices)) <= 8
    assert tuple(palette[0]) == (255, 0, 255, 0)
    assert (palette[1:len(np.unique(indices)), 3] > 0).all()  # one transparent entry only
    source = _transparent_image()
    assert (indices[source[..., 3] == 0] == 0).all()
    assert (indices[source[..., 3] > 0] != 0).all()
    shown = _rgba(dst)
    assert (shown[10:15, :, 3] < 255).all() and (shown[10:15, :, 3] > 0).all()


def test_transparent_entry_counts_toward_k_and_takes_no_part_in_the_fit():
    # Three visible colors plus fully transparent pixels of many RGB values: k = 4 is enough
    # to keep the three colors exactly, since the transparent pixels are not fitted.
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., :3] = palette_image(OPAQUE[:3], 30, 30, seed=3)
    rgba[..., 3] = 255
    rgba[:10, :, :3] = random_image(10, 30, seed=4)
    rgba[:10, :, 3] = 0
    result = core.quantize_image(rgba, 4)
    assert len(result.palette) == 4
    assert tuple(result.palette.colors[0]) == (0, 0, 0, 0)
    assert {tuple(c[:3]) for c in result.palette.colors[1:]} == {tuple(c) for c in OPAQUE[:3]}
    out = _rgba(result.image)
    assert np.array_equal(out[10:], rgba[10:])


def test_visible_pixels_are_exactly_nearest_visible_entry():
    """Nearest in premultiplied coordinates (R·A, G·A, B·A, 255·A), among visible entries."""
    rgba = random_image(32, 32, seed=7, channels=4)
    rgba[:8, :, 3] = 0
    result = core.quantize_image(rgba, 12, seed=1)
    palette = result.palette.colors.astype(np.int64)
    indices = np.asarray(result.image)
    visible = rgba[..., 3] > 0
    shown = np.flatnonzero(palette[:, 3] > 0)

    def premultiplied(c: np.ndarray) -> np.ndarray:
        c = c.astype(np.int64)
        return np.concatenate([c[..., :3] * c[..., 3:], 255 * c[..., 3:]], axis=-1)

    pixels = premultiplied(rgba[visible])
    d = ((pixels[:, None, :] - premultiplied(palette[shown])[None]) ** 2).sum(-1)
    best = d.min(axis=1)
    got = ((pixels - premultiplied(palette[indices[visible]])) ** 2).sum(-1)
    assert np.array_equal(got, best)
    assert (palette[indices[~visible], 3] == 0).all()


def test_opaque_rgba_gets_no_alpha(tmp_path):
    src = tmp_path / "in.png"
    rgba = np.dstack([palette_image(OPAQUE, 16, 16, 1), np.full((16, 16), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 4)
    with Image.open(dst) as out:
        assert out.mode == "P" and "transparency" not in out.info
    assert _ihdr(dst) == (2, 3)


@pytest.mark.parametrize("mode", ["LA", "P", "RGB", "L"])
def test_alpha_of_every_mode_is_kept(tmp_path, mode):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    src = tmp_path / f"in-{mode}.png"
    if mode == "LA":
        alpha = np.where(np.arange(16)[:, None] < 4, 0, 255).repeat(16, 1).astype(np.uint8)
        Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)]).save(src)
        expected = alpha == 0
    elif mode == "P":
        im = Image.fromarray(gray).convert("P")
        im.save(src, transparency=int(np.asarray(im)[0, 0]))
        expected = np.asarray(im) == np.asarray(im)[0, 0]
    elif mode == "RGB":
        Image.fromarray(np.dstack([gray] * 3)).save(src, transparency=(32, 32, 32))
        expected = gray == 32
    else:
        Image.fromarray(gray).save(src, transparency=48)
        expected = gray == 48
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 8)
    assert np.array_equal(_rgba(dst)[..., 3] == 0, expected)


def test_fully_transparent_image(tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGBA", (20, 10), (5, 6, 7, 0)).save(src)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 4)
    assert (_rgba(dst)[..., 3] == 0).all()
    assert _ihdr(dst)[0] == 1


def test_gif_gets_a_transparency_index_and_alpha_cut_at_half(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_transparent_image(), "RGBA").save(src)
    dst = tmp_path / "out.gif"
    proc = run(src, "-k", "8", "-o", dst)
    assert proc.returncode == 0
    assert "alpha cut at 50%" in proc.stderr.decode()
    with Image.open(dst) as out:
        assert out.info["transparency"] == 0
        alpha = np.asarray(out.convert("RGBA"))[..., 3]
    expected = np.where(_transparent_image()[..., 3] >= 128, 255, 0)
    assert np.array_equal(alpha, expected)


def test_webp_keeps_the_transparent_rgb(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_transparent_image(), "RGBA").save(src)
    dst = tmp_path / "out.webp"
    files.quantize_file(src, dst, options=QuantizeOptions(colors=8,
                                                              transparent_color=(1, 2, 3)))
    out = _rgba(dst)
    assert (out[:10].reshape(-1, 4) == (1, 2, 3, 0)).all()
    assert len(np.unique(out[out[..., 3] > 0].view(np.uint32))) <= 7


@pytest.mark.parametrize(("text", "rgb"), [("#FF0080", (255, 0, 128)), ("00ff00", (0, 255, 0)),
                                           ("1, 2,3", (1, 2, 3))])
def test_parse_rgb(text, rgb):
    assert parse_rgb(text) == rgb


@pytest.mark.parametrize("text", ["#ff00", "red", "1,2", "1,2,256", "#gg0000"])
def test_bad_transparent_color_is_a_usage_error(text, small_png, tmp_path):
    proc = run(small_png, "-o", tmp_path / "o.png", "--transparent-color", text)
    assert proc.returncode == 2
    assert os.listdir(tmp_path) == ["small.png"]


# ---------------------------------------------------------------- modes and bit depths


def test_sixteen_bit_gray_uses_the_high_byte(tmp_path):
    src = tmp_path / "in.png"
    values = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.frombytes("I;16", (16, 16), values.astype("<u2").tobytes()).save(src)
    with Image.open(src) as check:
        assert check.mode.startswith("I;16")
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 256)
    out = _rgba(dst)
    assert np.array_equal(out[..., 0], (values >> 8).astype(np.uint8))


def test_one_bit(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.eye(8, dtype=bool)).save(src)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 4)
    assert np.array_equal(_rgba(dst)[..., 0] == 255, np.eye(8, dtype=bool))
    assert _ihdr(dst)[0] == 1


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    src = tmp_path / "in.tif"
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, "F").save(src)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 256)
    assert np.array_equal(_rgba(dst)[..., 0], np.rint(values * 255).astype(np.uint8))


def test_float_tiff_out_of_range_is_refused(tmp_path):
    src = tmp_path / "in.tif"
    Image.fromarray(np.full((4, 4), 300.0, np.float32), "F").save(src)
    with pytest.raises(InputError, match="float samples must lie in 0–1"):
        files.quantize_file(src, tmp_path / "out.png", 4)
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


def test_int32_tiff_is_refused_via_command(tmp_path):
    src = tmp_path / "in.tif"
    Image.fromarray(np.full((4, 4), 70000, np.int32), "I").save(src)
    proc = run(src, "-o", tmp_path / "out.png")
    assert proc.returncode == 1
    assert proc.stderr.decode() == (f"Error: {src}: 32-bit integer samples have no standard "
                                    "display range; convert to 8 or 16 bits first\n")
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


def test_cmyk_jpeg_written_by_pillow(tmp_path):
    src = tmp_path / "in.jpg"
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8] = (0, 255, 255, 0)  # red
    cmyk[:, 8:] = (255, 0, 0, 0)  # cyan
    Image.fromarray(cmyk, "CMYK").save(src, quality=100)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 4)
    out = _rgba(dst).astype(int)
    assert (np.abs(out[:, :6, :3] - (255, 0, 0)) < 40).all()
    assert (np.abs(out[:, 10:, :3] - (0, 255, 255)) < 40).all()


def test_ycbcr_and_other_modes_in_memory():
    rgb = palette_image(OPAQUE, 8, 8, seed=2)
    ycc = Image.fromarray(rgb).convert("YCbCr")
    result = core.quantize_image(ycc, 4)
    assert np.abs(_rgba(result.image)[..., :3].astype(int) - rgb).max() <= 3
    hsv = Image.fromarray(rgb).convert("HSV")
    assert core.quantize_image(hsv, 4).n_colors <= 4


# ---------------------------------------------------------------- orientation, profiles


def test_exif_orientation_is_applied_and_dropped(tmp_path):
    rgb = np.zeros((10, 30, 3), np.uint8)
    rgb[:, :5] = (255, 0, 0)  # a red band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # display turned 90° clockwise
    src = tmp_path / "in.jpg"
    Image.fromarray(rgb).save(src, exif=exif, quality=100)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 4)
    with Image.open(dst) as out:
        assert out.size == (10, 30)
        assert not out.getexif()
        top = np.asarray(out.convert("RGB"))[:4].astype(int)
    assert (np.abs(top - (255, 0, 0)) < 40).all()  # the left band is now on top


def open_files() -> set[str]:
    """The files this process has open (targets of /proc/self/fd)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone already
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


@pytest.mark.parametrize(("ext", "turned"), [
    (ext, turned) for ext in ("png", "jpg", "webp", "tif") for turned in (False, True)
] + [("gif", False)])  # (Pillow writes no orientation tag to a GIF)
def test_a_still_frame_is_kept_without_a_copy_only_when_its_file_is_done(tmp_path, ext, turned):
    """A still PNG, JPEG or WebP that needs no turn is the frame itself (Pillow closed its file
    when it decoded it); a turned one, or one of a format that keeps its file, is a copy, and
    after the read no file of the input is left open either way."""
    rgb = random_image(12, 20, seed=5)
    exif = Image.Exif()
    if turned:
        exif[0x0112] = 6
    src = tmp_path / f"in.{ext}"
    Image.fromarray(rgb).save(src, exif=exif.tobytes(), **({"lossless": True} if ext == "webp"
                                                            else {}))
    before = open_files()
    source = imagefile.open_image(src, max_pixels=10**6)
    decoded = frames.read(source, label=src.name)
    kept = decoded.images[0] is source
    if not kept:
        source.close()
    assert kept == (not turned and ext in ("png", "jpg", "webp"))
    assert str(src) not in open_files() - before
    got = np.asarray(decoded.images[0].convert("RGB"))
    assert got.shape == ((20, 12, 3) if turned else (12, 20, 3))
    if ext in ("png", "tif", "webp"):  # lossless: the pixels, turned as the tag says
        assert np.array_equal(got, np.rot90(rgb, -1) if turned else rgb)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, 4)
    assert str(src) not in open_files() - before
    with Image.open(dst) as out:
        assert out.size == ((12, 20) if turned else (20, 12))


def _srgb_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_icc_profile_and_dpi_are_kept_unless_strip(tmp_path):
    src = tmp_path / "in.png"
    icc = _srgb_bytes()
    Image.fromarray(random_image(16, 16, 1)).save(src, icc_profile=icc, dpi=(300, 300))
    for fmt in ("png", "tif", "jpg", "webp"):
        dst = tmp_path / f"out.{fmt}"
        files.quantize_file(src, dst, 8)
        with Image.open(dst) as out:
            assert out.info.get("icc_profile") == icc, fmt
            if fmt != "webp":
                assert round(out.info["dpi"][0]) == 300, fmt
    dst = tmp_path / "strip.png"
    proc = run(src, "-k", "8", "-o", dst, "--strip")
    assert proc.returncode == 0
    with Image.open(dst) as out:
        assert "icc_profile" not in out.info and "dpi" not in out.info


def test_to_srgb_converts_and_drops_the_profile(tmp_path):
    # sRGB to sRGB must leave colors (almost) unchanged; wide-gamut: see the next test.
    src = tmp_path / "in.png"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = palette_image(np.array([[250, 10, 10], [10, 250, 10]], np.uint8), 8, 8, seed=1)
    Image.fromarray(rgb).save(src, icc_profile=icc)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, options=QuantizeOptions(colors=4, to_srgb=True))
    with Image.open(dst) as out:
        assert "icc_profile" not in out.info
        got = np.asarray(out.convert("RGB")).astype(int)
    assert np.abs(got - rgb).max() <= 3  # sRGB to sRGB: (almost) unchanged


def test_to_srgb_changes_wide_gamut_colors(corpus, tmp_path):
    src = corpus / "tricky" / "sharp-p3.png"
    kept, converted = tmp_path / "kept.png", tmp_path / "srgb.png"
    files.quantize_file(src, kept, 16)
    files.quantize_file(src, converted, options=QuantizeOptions(colors=16, to_srgb=True))
    with Image.open(kept) as a, Image.open(converted) as b:
        assert a.info.get("icc_profile") and "icc_profile" not in b.info
        assert not np.array_equal(_rgba(a), _rgba(b))


@pytest.mark.parametrize("ext", ["gif", "bmp"])
def test_formats_without_a_profile_get_srgb_pixels(corpus, tmp_path, ext):
    """GIF and BMP cannot embed the profile: the pixels are converted to sRGB, not left in
    the source's wide-gamut space with no profile to describe them."""
    src = corpus / "tricky" / "sharp-prophoto.png"
    out, reference = tmp_path / f"out.{ext}", tmp_path / "srgb.png"
    assert run(src, "-k", "16", "-o", out, "--shared-palette").returncode == 0
    assert run(src, "-k", "16", "-o", reference, "--to-srgb").returncode == 0
    proc = run(src, "-k", "16", "-o", tmp_path / f"single.{ext}")
    assert proc.returncode == 0
    with Image.open(out) as a, Image.open(reference) as b, \
            Image.open(tmp_path / f"single.{ext}") as c:
        assert np.array_equal(_rgba(a), _rgba(b))
        assert np.array_equal(_rgba(c), _rgba(b))


def test_corrupt_profile_is_dropped_with_a_warning(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(random_image(8, 8, 2)).save(src, icc_profile=b"not a profile at all")
    dst = tmp_path / "out.png"
    proc = run(src, "-k", "4", "-o", dst, "--to-srgb")
    assert proc.returncode == 0
    assert "ignoring unreadable ICC profile" in proc.stderr.decode()
    with Image.open(dst) as out:
        assert "icc_profile" not in out.info


# ---------------------------------------------------------------- frames


def _animation(tmp_path: Path, fmt: str, n: int = 3, size: tuple[int, int] = (12, 10),
               transparent: bool = False) -> tuple[Path, list[np.ndarray]]:
    rng = np.random.default_rng(5)
    colors = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    pictures = []
    for i in range(n):
        rgba = np.dstack([palette_image(colors[i:i + 3], size[1], size[0], seed=i),
                          np.full(size[::-1], 255, np.uint8)])
        if transparent:
            rgba[: 2 + i, :, 3] = 0
            rgba[: 2 + i, :, :3] = 0
        pictures.append(rgba)
    images = [Image.fromarray(p, "RGBA") for p in pictures]
    src = tmp_path / f"anim.{fmt}"
    extra = {"lossless": True} if fmt == "webp" else {}
    images[0].save(src, save_all=True, append_images=images[1:], duration=[100, 200, 300][:n],
                   loop=2, **extra)
    with Image.open(src) as written:  # what the encoder kept (GIF has its own palette)
        pictures = [np.asarray(f.convert("RGBA")) for f in ImageSequence.Iterator(written)]
    return src, pictures


@pytest.mark.parametrize("src_fmt", ["gif", "png", "webp"])
@pytest.mark.parametrize("dst_fmt", ["gif", "png", "webp", "tif"])
@pytest.mark.parametrize("transparent", [False, True])
def test_animation_round_trip(tmp_path, src_fmt, dst_fmt, transparent):
    src, pictures = _animation(tmp_path, src_fmt, transparent=transparent)
    dst = tmp_path / f"out.{dst_fmt}"
    result = files.quantize_file(src, dst, 4)
    assert result.n_colors <= 4
    with Image.open(dst) as out:
        shown = [np.asarray(f.convert("RGBA")) for f in ImageSequence.Iterator(out)]
        if dst_fmt != "tif":
            assert out.info.get("loop") == 2
    assert len(shown) == 3
    every = np.concatenate([s[s[..., 3] > 0] for s in shown]).view(np.uint32)
    assert len(np.unique(every)) <= 4  # one palette for every frame: no flicker
    for got, want in zip(shown, pictures, strict=True):
        assert np.array_equal(got[..., 3] == 0, want[..., 3] == 0)
    if dst_fmt != "tif":
        with Image.open(dst) as out:
            durations = []
            for f in ImageSequence.Iterator(out):
                f.load()
                durations.append(int(f.info["duration"]))
        assert durations == [100, 200, 300]


def test_one_frame_with_frame_option(tmp_path):
    src, pictures = _animation(tmp_path, "gif")
    dst = tmp_path / "out.png"
    proc = run(src, "--frame", "1", "-k", "3", "-o", dst)
    assert proc.returncode == 0
    with Image.open(dst) as out:
        assert getattr(out, "n_frames", 1) == 1
        assert np.array_equal(np.asarray(out.convert("RGB")), pictures[1][..., :3])
    proc = run(src, "--frame", "3", "-o", tmp_path / "none.png")
    assert proc.returncode == 1 and "has 3 frame(s), no frame 3" in proc.stderr.decode()
    assert not (tmp_path / "none.png").exists()


def test_single_frame_formats_get_frame_zero_with_a_warning(tmp_path):
    src, pictures = _animation(tmp_path, "gif")
    dst = tmp_path / "out.bmp"
    proc = run(src, "-k", "3", "-o", dst)
    assert proc.returncode == 0 and "wrote frame 0 of 3" in proc.stderr.decode()
    assert np.array_equal(_rgba(dst)[..., :3], pictures[0][..., :3])


def test_multi_page_tiff(tmp_path):
    src = tmp_path / "pages.tif"
    pages = [Image.fromarray(random_image(8, 8, s)) for s in range(3)]
    pages[0].save(src, save_all=True, append_images=pages[1:])
    dst = tmp_path / "out.tif"
    files.quantize_file(src, dst, 8)
    with Image.open(dst) as out:
        assert out.n_frames == 3
        assert out.mode == "P"


class _CountingFile(stdio.BytesIO):
    """A file that counts its reads (each a step of a walk over the TIFF's pages)."""

    reads = 0

    def read(self, *args: int) -> bytes:
        self.reads += 1
        return super().read(*args)


def test_multi_page_tiff_is_pillows_file_in_linear_time():
    """The TIFF page writer gives the bytes of Pillow's ``save_all`` (the reference) while
    reading a bounded number of times per page (Pillow's walks every page written so far for
    each new one: a 1x1-frame GIF of thousands of frames took seconds)."""
    def pages(n: int) -> list[Image.Image]:
        """Fresh images (a save loads them) whose palette was set after they were made."""
        images = []
        for i in range(n):
            image = Image.fromarray(random_image(1 + i % 3, 2, seed=i)[..., 0] % 4, "P")
            image.putpalette(bytes(random_image(1, 4, seed=n + i).ravel()))
            images.append(image)
        return images

    reads = {}
    for n in (100, 200):
        images = pages(n)
        reference = stdio.BytesIO()
        images[0].save(reference, format="TIFF", save_all=True, append_images=images[1:],
                       dpi=(72.0, 72.0))
        written = _CountingFile()
        encode._save_tiff_pages(pages(n), written, {"dpi": (72.0, 72.0)})
        assert written.getvalue() == reference.getvalue()
        reads[n] = written.reads
    assert reads[200] <= 2.1 * reads[100]  # Pillow's appender: 4x
    with Image.open(stdio.BytesIO(written.getvalue())) as back:
        assert back.n_frames == 200
        back.seek(199)
        assert back.size == (2, 1 + 199 % 3)


def test_frame_count_times_size_is_under_the_pixel_limit(tmp_path):
    src, _ = _animation(tmp_path, "gif")  # 3 frames of 12x10
    with pytest.raises(ImageTooLargeError, match="3 frames of 12x10 are 360 pixels"):
        files.quantize_file(src, tmp_path / "o.png", options=QuantizeOptions(max_pixels=359))
    files.quantize_file(src, tmp_path / "o.png", options=QuantizeOptions(max_pixels=360))
    # one frame needs room for one frame only
    files.quantize_file(src, tmp_path / "o.png",
                           options=QuantizeOptions(max_pixels=120, frame=2))


def _gif_frame(width: int, height: int) -> tuple[bytes, bytes]:
    """A one-frame two-color GIF of ``width`` x ``height`` made by Pillow, split into its
    global color table and its image block (descriptor, LZW data), for hand-made files."""
    image = Image.new("P", (width, height))
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = stdio.BytesIO()
    image.save(buffer, "GIF", optimize=False)
    data = buffer.getvalue()
    packed = data[10]
    at = 13 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
    table = data[13:at]
    while data[at] == 0x21:  # extensions: label, then sub-blocks up to a zero length
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    start = at
    assert data[at] == 0x2C and not data[at + 9] & 0x80  # no local color table
    at += 11  # descriptor and LZW minimum code size
    while data[at]:
        at += data[at] + 1
    return table, data[start : at + 1]


def _growing_gif(path: Path, height: int, count: int) -> Path:
    """A GIF of a 1x1 canvas and frame, then ``count`` frames of 1 x ``height``: Pillow grows
    the canvas to hold them."""
    table, small = _gif_frame(1, 1)
    _, tall = _gif_frame(1, height)
    path.write_bytes(b"GIF89a" + bytes([1, 0, 1, 0, 0x80, 0, 0]) + table + small
                     + tall * count + b";")
    return path


def test_frames_that_grow_the_canvas_count_toward_the_pixel_limit(tmp_path):
    # A 1x1 canvas whose later frames are 1x300: Pillow grows the canvas to hold them, so
    # every later frame is 300 pixels, not the 1 the headers promise (found by fuzzing).
    src = _growing_gif(tmp_path / "grows.gif", 300, 5)
    with Image.open(src) as opened:
        assert opened.size == (1, 1) and opened.n_frames == 6
    with pytest.raises(ImageTooLargeError, match=r"frame 4 is 1x300 \(the first 1x1\): "
                                                 r"the frames up to it are 1,201 pixels"):
        files.quantize_file(src, tmp_path / "o.png", options=QuantizeOptions(max_pixels=1000))
    assert not (tmp_path / "o.png").exists()
    proc = run(src, "--max-pixels", "1000", "-o", tmp_path / "o.png")
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: ")
    assert "over the limit of 1,000" in lines[0]
    # the limit is the frames' pixel count itself: 1 + 5 x 300
    files.quantize_file(src, tmp_path / "o.png", options=QuantizeOptions(max_pixels=1501))
    with Image.open(tmp_path / "o.png") as out:
        out.load()


def test_frames_or_pages_of_different_sizes_into_one_size_write_the_first(tmp_path):
    """An output of one size gets the first frame (or page) and a warning that names which."""
    gif = _growing_gif(tmp_path / "grows.gif", 30, 2)
    tif = tmp_path / "pages.tif"
    pages = [Image.fromarray(random_image(h, 8, h)) for h in (8, 12)]
    pages[0].save(tif, save_all=True, append_images=pages[1:])
    for src, fmt, part in ((gif, "gif", "frame"), (gif, "png", "frame"), (tif, "png", "page")):
        dst = tmp_path / f"out-{src.suffix[1:]}.{fmt}"
        proc = run(src, "-k", "2", "-o", dst)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.decode().splitlines() == [
            f"warning: {src}: {part}s differ in size and {fmt.upper()} holds one size; wrote "
            f"{part} 0 (use --frame N to choose, or a TIFF output for all {part}s)"]
        with Image.open(dst) as out:
            assert getattr(out, "n_frames", 1) == 1
            assert out.size == ((1, 1) if src == gif else (8, 8))
    assert run(gif, "-k", "2", "-o", tmp_path / "all.tif").stderr == b""
    with Image.open(tmp_path / "all.tif") as out:
        assert [(out.seek(i), out.size)[1] for i in range(out.n_frames)] == [(1, 1), (1, 30),
                                                                            (1, 30)]


def test_animation_output_is_reproducible(tmp_path):
    src, _ = _animation(tmp_path, "webp", transparent=True)
    for fmt in ("gif", "png", "webp"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        assert run(src, "-k", "4", "-o", a).returncode == 0
        assert run(src, "-k", "4", "-o", b).returncode == 0
        assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize(("k", "depth"), [(2, 1), (4, 2), (16, 4), (17, 8)])
def test_png_has_the_smallest_bit_depth(tmp_path, k, depth):
    src = tmp_path / "in.png"
    colors = np.random.default_rng(k).integers(0, 256, (k, 3), dtype=np.uint8)
    Image.fromarray(palette_image(colors, 16, 16, seed=k)).save(src)
    dst = tmp_path / "out.png"
    files.quantize_file(src, dst, k)
    assert _ihdr(dst) == (depth, 3)


@pytest.mark.parametrize(("fmt", "mode"), [("gif", "P"), ("tif", "P"), ("bmp", "P"),
                                           ("webp", "RGB"), ("jpg", "RGB")])
def test_output_formats(tmp_path, fmt, mode):
    src = tmp_path / "in.png"
    Image.fromarray(palette_image(OPAQUE, 16, 16, seed=1)).save(src)
    dst = tmp_path / f"out.{fmt}"
    proc = run(src, "-k", "4", "-o", dst)
    assert proc.returncode == 0
    assert ("adds colors back" in proc.stderr.decode()) == (fmt == "jpg")
    with Image.open(dst) as out:
        assert out.mode == mode
        if fmt != "jpg":
            assert np.array_equal(np.asarray(out.convert("RGB")), palette_image(OPAQUE, 16, 16, 1))


@pytest.mark.parametrize(("fmt", "mode"), [("tif", "RGBA"), ("bmp", "P"), ("jpg", "RGB")])
def test_alpha_in_formats_without_palette_alpha(tmp_path, fmt, mode):
    src = tmp_path / "in.png"
    Image.fromarray(_transparent_image(), "RGBA").save(src)
    dst = tmp_path / f"out.{fmt}"
    files.quantize_file(src, dst, 8)
    with Image.open(dst) as out:
        assert out.mode == mode
        if mode == "RGBA":
            assert np.array_equal(np.asarray(out)[..., 3] == 0, _transparent_image()[..., 3] == 0)
        else:  # shown over white
            assert (np.asarray(out.convert("RGB"))[2:8, 2:-2] > 230).all()


def test_format_option_overrides_extension(tmp_path, small_png):
    dst = tmp_path / "out.png"
    assert run(small_png, "-k", "4", "-o", dst, "--format", "gif").returncode == 0
    assert dst.read_bytes()[:4] == b"GIF8"


# ---------------------------------------------------------------- names and pipes


@pytest.mark.parametrize("name", ["with space.png", "ünïcödé.png", "UPPER.PNG", "jpeg.png"])
def test_file_names_and_content_over_extension(tmp_path, name):
    src = tmp_path / name
    Image.fromarray(random_image(8, 8, 3)).save(src, format="JPEG" if name == "jpeg.png"
                                                 else "PNG")
    proc = run(src, "-k", "4")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"{Path(name).stem}-4c.png").exists()


def test_stdin_to_stdout(tmp_path):
    buffer = stdio.BytesIO()
    Image.fromarray(_transparent_image(), "RGBA").save(buffer, "PNG")
    proc = run("-", "-k", "8", "-o", "-", "-v", stdin=buffer.getvalue(), cwd=tmp_path)
    assert proc.returncode == 0
    assert os.listdir(tmp_path) == []
    out = Image.open(stdio.BytesIO(proc.stdout))
    assert out.format == "PNG" and out.mode == "P"
    assert "PSNR" in proc.stderr.decode()
    # default output for standard input is standard output, format from --format
    proc = run("-", "-k", "8", "--format", "gif", stdin=buffer.getvalue(), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout[:4] == b"GIF8"
    assert os.listdir(tmp_path) == []


def test_stdin_errors_write_nothing_to_stdout(tmp_path):
    proc = run("-", "-o", "-", stdin=b"this is not an image", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr.decode() == "Error: <stdin>: not a recognized image file\n"
    proc = run("-", "-", stdin=b"", cwd=tmp_path)
    assert proc.returncode == 2


def test_file_to_stdout_through_a_pipe(tmp_path, small_png):
    proc = run(small_png, "-k", "4", "-o", "-", "--format", "webp")
    assert proc.returncode == 0
    assert proc.stdout[:4] == b"RIFF" and proc.stderr == b""
    assert Image.open(stdio.BytesIO(proc.stdout)).format == "WEBP"


def test_library_streams(tmp_path, small_png):
    out = stdio.BytesIO()
    with open(small_png, "rb") as handle:
        files.quantize_file(handle, out, 4, fmt="PNG")
    assert Image.open(stdio.BytesIO(out.getvalue())).mode == "P"


def test_frames_read_refuses_nothing_it_can_convert():
    for mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "La", "CMYK", "YCbCr",
                 "HSV", "I;16", "I;16B"):
        im = Image.new(mode, (3, 2))
        decoded = frames.read(im)
        assert decoded.mode in ("RGB", "RGBA") and decoded.images[0].size == (3, 2), mode
    with pytest.raises(InputError, match="no standard display range"):
        imagefile.to_rgba(Image.new("I", (2, 2), 5))


def test_image_too_wide_for_the_output_format_is_refused(tmp_path):
    src = tmp_path / "wide.png"
    Image.new("RGB", (16384, 1), (1, 2, 3)).save(src)
    dst = tmp_path / "wide.webp"
    proc = run(src, "-o", dst)
    assert proc.returncode == 1
    assert proc.stderr.decode() == (f"Error: {dst}: WEBP holds at most 16,383 pixels per side; "
                                    "the image is 16384x1 (choose another --format)\n")
    assert sorted(os.listdir(tmp_path)) == ["wide.png"]
