import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorquant import atomic, formats, imagefile
from colorquant.errors import ImageTooLargeError, InputError, OutputError


@pytest.mark.parametrize(("name", "fmt"), [
    ("a.png", "PNG"), ("a.PNG", "PNG"), ("b.jpg", "JPEG"), ("b.JPEG", "JPEG"), ("c.gif", "GIF"),
    ("d.webp", "WEBP"), ("e.tif", "TIFF"), ("e.tiff", "TIFF"), ("f.bmp", "BMP"),
])
def test_output_format_by_extension(name, fmt):
    assert formats.output_format(name) == fmt


@pytest.mark.parametrize("name", ["a.xyz", "noext", "a.png.txt"])
def test_unknown_extension_is_refused(name):
    with pytest.raises(OutputError, match="unknown output extension"):
        formats.output_format(name)


@pytest.mark.parametrize(("given", "fmt"), [("png", "PNG"), ("JPG", "JPEG"), ("tif", "TIFF"),
                                            ("tiff", "TIFF"), ("webp", "WEBP")])
def test_format_override(given, fmt):
    assert formats.output_format("whatever.xyz", given) == fmt


def test_default_output_is_beside_input():
    from colorquant import plan

    def default(src: str, k: int, ext: str = "png") -> Path:
        return Path(src).with_name(plan.render_name(plan.DEFAULT_NAME, src, k, ext))

    assert default("dir/photo.jpg", 16) == Path("dir/photo-16c.png")
    assert default("photo.tar.png", 8, "gif") == Path("photo.tar-8c.gif")


def test_atomic_write_replaces_whole_file(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    atomic.atomic_write(dst, lambda f: f.write(b"new data"))
    assert dst.read_bytes() == b"new data"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_write_leaves_existing_file_and_no_temp(tmp_path, error):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"precious")

    def writer(handle):
        handle.write(b"partial")
        raise error

    with pytest.raises(type(error)):
        atomic.atomic_write(dst, writer)
    assert dst.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_interrupt_as_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """A signal that lands just as the temporary file's open returns (the file exists, its
    descriptor is not yet kept): the interruption propagates and no temporary file is left."""
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"precious")
    real_open = os.open

    def open_then_interrupted(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if str(path).endswith(".tmp"):
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(dst, lambda f: f.write(b"new"))
    monkeypatch.undo()
    assert dst.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_another_writers_temporary_file_is_never_removed(tmp_path, monkeypatch):
    """A temporary name already taken is skipped and left alone."""
    names = iter(["a" * 12, "b" * 12])
    monkeypatch.setattr(atomic, "_random_hex", lambda: next(names))
    theirs = tmp_path / f".out.bin.{'a' * 12}.tmp"
    theirs.write_bytes(b"someone else's")
    atomic.atomic_write(tmp_path / "out.bin", lambda f: f.write(b"mine"))
    assert (tmp_path / "out.bin").read_bytes() == b"mine"
    assert theirs.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == sorted(["out.bin", theirs.name])


def test_failed_write_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        atomic.atomic_write(tmp_path / "new.bin", lambda f: (_ for _ in ()).throw(RuntimeError()))
    assert os.listdir(tmp_path) == []


def test_missing_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        atomic.atomic_write(tmp_path / "nope" / "x.png", lambda f: None)


def test_written_file_has_normal_permissions(tmp_path):
    dst = tmp_path / "out.bin"
    atomic.atomic_write(dst, lambda f: f.write(b"x"))
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask


def test_open_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        imagefile.open_image(tmp_path / "missing.png", max_pixels=10**6)
    with pytest.raises(InputError, match="directory"):
        imagefile.open_image(tmp_path, max_pixels=10**6)
    text = tmp_path / "text.png"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a recognized image"):
        imagefile.open_image(text, max_pixels=10**6)


def test_truncated_png_is_an_input_error(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:400])
    with pytest.raises(InputError, match="corrupt or truncated"):
        imagefile.open_image(bad, max_pixels=10**6)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageTooLargeError, match="10,000 pixels"):
        imagefile.open_image(path, max_pixels=9_999)
    assert imagefile.open_image(path, max_pixels=10_000).size == (100, 100)


def test_to_rgb_modes():
    assert imagefile.to_rgb(Image.new("L", (2, 2), 7)).mode == "RGB"
    assert imagefile.to_rgb(Image.new("RGBA", (2, 2), (1, 2, 3, 255))).mode == "RGB"
    assert imagefile.to_rgb(Image.new("RGBA", (2, 2), (1, 2, 3, 100))).mode == "RGBA"
