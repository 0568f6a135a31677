"""The I/O shell: read images into RGB(A), write outputs atomically, output-path rules."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from .errors import ImageTooLargeError, InputError, OutputError

#: Output formats by file extension (lower case); indexed formats keep the palette.
FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
}
#: Formats that cannot store a palette: the output is RGB and its compression adds colors.
LOSSY_FORMATS = frozenset({"JPEG"})
EXTENSIONS: dict[str, str] = {"PNG": "png", "GIF": "gif", "WEBP": "webp", "TIFF": "tif",
                              "BMP": "bmp", "JPEG": "jpg"}

_bomb_lock = threading.Lock()


def output_format(path: str | os.PathLike[str], override: str | None = None) -> str:
    """Pillow format name for an output path (by extension) or an explicit format name."""
    if override:
        name = override.upper().replace("JPG", "JPEG").replace("TIF", "TIFF")
        name = "TIFF" if name == "TIFFF" else name
        if name not in EXTENSIONS:
            raise OutputError(f"unknown output format {override!r}")
        return name
    ext = Path(path).suffix.lower()
    try:
        return FORMATS[ext]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise OutputError(
            f"{os.fspath(path)}: unknown output extension {ext or '(none)'!r} (use one of {known})"
        ) from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_image(source: str | os.PathLike[str] | BinaryIO, *, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, refusing images over ``max_pixels`` before decoding.

    Raises
    ------
    InputError
        Missing file, a directory, not an image, or a corrupt/truncated image.
    ImageTooLargeError
        The header declares more than ``max_pixels`` pixels.
    """
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "-")
    label = os.fspath(name) if isinstance(name, (str, os.PathLike)) else "-"
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise InputError(f"{label}: no such file")
        if os.path.isdir(source):
            raise InputError(f"{label}: is a directory, not an image")
    try:
        # Pillow's own bomb check is replaced by ours, which has a configurable limit.
        with _bomb_lock:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Image.UnidentifiedImageError:
        raise InputError(f"{label}: not a recognized image file") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read: {exc.strerror or _describe(exc)}") from None
    except Exception as exc:  # Pillow plugins raise many types on hostile headers
        raise InputError(f"{label}: not a valid image ({_describe(exc)})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"{label}: {width}x{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (see --max-pixels)"
        )
    if width == 0 or height == 0:
        image.close()
        raise InputError(f"{label}: image has no pixels ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Exception as exc:
        image.close()
        raise InputError(f"{label}: corrupt or truncated image ({_describe(exc)})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB or RGBA version of any Pillow image (RGBA only when some pixel is not opaque)."""
    # A broken EXIF block must not stop the run: keep the stored orientation then.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image) or image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            return rgba
        return rgba.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def atomic_write(dst: str | os.PathLike[str], writer: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``writer`` so that ``dst`` is either complete or untouched.

    The data go to a temporary file in the target folder, which is renamed over ``dst`` only
    when ``writer`` returns; on any error or interruption the temporary file is removed.
    """
    dst = Path(dst)
    folder = dst.parent if str(dst.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{dst}: output folder {str(folder)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{dst.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write: {exc.strerror or _describe(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"{dst}: cannot write: {exc.strerror or _describe(exc)}") from None
        raise


def default_output(src: str | os.PathLike[str], k: int, fmt: str = "PNG") -> Path:
    """The output path used when none is given: ``photo.jpg`` → ``photo-16c.png`` beside it."""
    src = Path(src)
    return src.with_name(f"{src.stem}-{k}c.{EXTENSIONS[fmt]}")


#: zlib strategy Z_RLE: for PNGs of at most 16 colors (4 bits or fewer per pixel) it was as
#: small as level 9 and faster than level 1 on every image measured (see README, Performance).
Z_RLE = 3


def save_params(fmt: str, *, compress_level: int, n_colors: int = 256) -> dict[str, object]:
    """Encoder arguments for a format: deterministic, lossless where the format allows.

    ``n_colors`` (the palette size) picks the PNG zlib strategy: run-length matching for
    palettes of at most 16 colors, zlib's default above.
    """
    if fmt == "PNG":
        if compress_level > 0 and n_colors <= 16:
            return {"compress_level": compress_level, "compress_type": Z_RLE}
        return {"compress_level": compress_level}
    if fmt == "WEBP":
        return {"lossless": True, "quality": 100, "method": 4}
    if fmt == "JPEG":
        return {"quality": 95}
    return {}
