"""Reading images: open with guards (pixel and frame limits, damaged files), convert to RGB(A).

The input side of the file layer; output formats are :mod:`colorquant.formats`, encoding
:mod:`colorquant.encode`, atomic writing :mod:`colorquant.atomic`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import ImageTooLargeError, InputError, first_line
from .memory import as_memory_error, is_out_of_memory
from .options import Log

_bomb_lock = threading.Lock()
#: Most frames read from one file: each frame has a fixed cost, so a flood of tiny frames is
#: refused even under the pixel limit.
MAX_FRAMES = 10_000


#: The file name that means standard input (as INPUT) or standard output (as -o).
STDIO = "-"


def is_stdio(path: object) -> bool:
    """Whether a path given by the user means standard input/output (exactly ``-``)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path) == STDIO


def display_name(source: str | os.PathLike[str] | BinaryIO) -> str:
    """How an input is named in messages (``<stdin>`` for standard input)."""
    if is_stdio(source):
        return "<stdin>"
    return _label(source)


def _label(source: str | os.PathLike[str] | BinaryIO) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) and not name.startswith("<") else "<stdin>"


def read_stream(stream: BinaryIO) -> BytesIO:
    """The whole of a (possibly unseekable) stream such as standard input, in memory."""
    try:
        return BytesIO(stream.read())
    except OSError as exc:
        raise InputError(f"{_label(stream)}: cannot read: {exc.strerror or first_line(exc)}"
                         ) from None


#: File signatures, to tell a damaged or unsupported image from a file that is no image.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _unidentified(source: str | os.PathLike[str] | BinaryIO) -> str:
    """Why Pillow could not identify a file: empty, a damaged known format, or no image."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                head = handle.read(16)
        else:
            source.seek(0)
            head = source.read(16)
    except OSError:
        head = b"?"
    if not head:
        return "not a recognized image file (the file is empty)"
    kind = next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WebP"
    if kind:
        return f"damaged or unsupported {kind} file (Pillow cannot decode it)"
    return "not a recognized image file"


def open_image(source: str | os.PathLike[str] | BinaryIO, *, max_pixels: int,
               frame: int | None = None,
               before_decode: Callable[[int, int], None] | None = None) -> Image.Image:
    """Open and decode an image, refusing images over ``max_pixels`` before decoding.

    ``source`` may be a path, ``"-"`` for standard input, or a binary file object. For a
    multi-frame image the limit applies to width × height × frames (only one frame when
    ``frame`` is given), checked from the headers before any frame is decoded; the first frame
    (or ``frame``) is loaded. ``before_decode`` is called with the first frame's pixel count
    and the encoded file's size in bytes once the headers passed every check, just before
    that frame is decoded.

    Raises
    ------
    InputError
        Missing file, a directory, not an image, a corrupt/truncated image, no such frame.
    ImageTooLargeError
        The headers declare more than ``max_pixels`` pixels.
    """
    if is_stdio(source):
        source = read_stream(sys.stdin.buffer)
        source.name = "<stdin>"  # type: ignore[attr-defined]
    label = _label(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise InputError(f"{label}: no such file")
        if os.path.isdir(source):
            raise InputError(f"{label}: is a directory, not an image")
    elif not source.seekable():
        source = read_stream(source)
    try:
        # Pillow's bomb check at our limit, already while opening: the GIF plugin fills its
        # first frame there, so a tiny file declaring gigapixels is refused before it costs
        # time and memory.
        with pixel_limit(max_pixels, label):
            image = Image.open(source)
    except InputError:
        raise
    except Image.UnidentifiedImageError:
        raise InputError(f"{label}: {_unidentified(source)}") from None
    except MemoryError:
        raise
    except OSError as exc:
        if is_out_of_memory(exc):
            raise as_memory_error(exc) from None
        raise InputError(f"{label}: cannot read: {exc.strerror or first_line(exc)}") from None
    except Exception as exc:  # Pillow plugins raise many types on hostile headers
        raise InputError(f"{label}: not a valid image ({first_line(exc)})") from None
    try:
        if image.format == "PNG":
            check_png_chunks(image.fp, label)
        with pixel_limit(max_pixels, label):
            _check_size(image, label, max_pixels, frame)
            if before_decode is not None:
                before_decode(image.width * image.height, _encoded_size(image))
            image.load()
    except InputError:
        image.close()
        raise
    except Exception as exc:
        image.close()
        if is_out_of_memory(exc):  # not damage: an allocation failed while decoding
            raise as_memory_error(exc) from None
        raise InputError(f"{label}: corrupt or truncated image ({first_line(exc)})") from None
    return image


def _encoded_size(image: Image.Image) -> int:
    """Bytes of the opened image's file (:func:`open_image` makes every handle seekable), or
    0 when its reader holds none (some read their first frame while opening)."""
    handle = getattr(image, "fp", None)
    if handle is None:
        return 0
    try:
        here = handle.tell()
        try:
            return int(handle.seek(0, os.SEEK_END))
        finally:
            handle.seek(here)
    except (OSError, ValueError, AttributeError):
        return 0


def check_png_chunks(handle: BinaryIO, label: str) -> None:
    """Refuse a PNG file with a damaged chunk (its CRC does not match), as libpng does.

    Pillow checks no CRC of image data (IDAT, fdAT), so a damaged file would decode into
    wrong pixels. Every chunk up to IEND is checked, reading one chunk at a time; the
    position of ``handle`` is kept.
    """
    position = handle.tell()
    try:
        handle.seek(8)
        while True:
            start = handle.tell()
            head = handle.read(8)
            if len(head) < 8:
                return  # truncated: the decoder says so
            length = int.from_bytes(head[:4], "big")
            kind = head[4:8]
            crc = zlib.crc32(kind)
            left = length
            while left > 0:
                block = handle.read(min(left, 1 << 20))
                if not block:
                    return
                crc = zlib.crc32(block, crc)
                left -= len(block)
            stored = handle.read(4)
            if len(stored) < 4:
                return
            if int.from_bytes(stored, "big") != crc:
                name = kind.decode("latin-1")
                raise InputError(f"{label}: corrupt PNG file (bad CRC in the {name!r} chunk at "
                                 f"byte {start:,})")
            if kind == b"IEND":
                return
    finally:
        handle.seek(position)


@contextlib.contextmanager
def pixel_limit(max_pixels: int, label: str) -> Iterator[None]:
    """Let Pillow refuse images and frames beyond ``max_pixels`` while opening and seeking
    (frames larger than the canvas), reported as :class:`ImageTooLargeError`; Pillow's
    warnings are silenced."""
    with _bomb_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels / 2  # Pillow raises above twice this
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found[1]):,} pixels" if found else f"more than {max_pixels:,} pixels"
            raise ImageTooLargeError(f"{label}: declares {size}, over the limit of "
                                     f"{max_pixels:,} (see --max-pixels)") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def count_frames(image: Image.Image) -> int:
    """Number of frames, from the headers: Pillow walks GIF and TIFF frame headers without
    decoding any pixel data."""
    if not getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) <= 1:
        return 1
    return int(image.n_frames)


def _check_size(image: Image.Image, label: str, max_pixels: int, frame: int | None) -> None:
    """Refuse empty images, missing frames and images (or animations) over the pixel limit."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (see --max-pixels)"
        )
    if width == 0 or height == 0:
        raise InputError(f"{label}: image has no pixels ({width}x{height})")
    n_frames = count_frames(image)
    if frame is not None:
        if frame >= n_frames:
            raise InputError(f"{label}: has {n_frames} frame(s), no frame {frame}")
        image.seek(frame)
        return
    if n_frames > MAX_FRAMES:
        raise ImageTooLargeError(f"{label}: {n_frames:,} frames, over the limit of "
                                 f"{MAX_FRAMES:,} (take one with --frame N)")
    if width * height * n_frames > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {n_frames:,} frames of {width}x{height} are "
            f"{width * height * n_frames:,} pixels, over the limit of {max_pixels:,} "
            f"(see --max-pixels, or take one frame with --frame)"
        )


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


#: The EXIF orientations that turn or mirror the image (1 and absent: as stored).
_TURNED = frozenset(range(2, 9))


def upright(image: Image.Image) -> Image.Image:
    """The image turned by its orientation tag (EXIF, PNG eXIf, or XMP); a bad tag is ignored.

    An image that needs no turn comes back as it is, not copied (Pillow's ``exif_transpose``
    copies it: 96 MB and 60 ms at 24 MP).
    """
    try:
        image.load()
        if image.getexif().get(ExifTags.Base.Orientation, 1) not in _TURNED:
            return image
        return ImageOps.exif_transpose(image) or image
    except MemoryError:  # not a bad tag: the caller must not get the source image back
        raise
    except Exception:
        return image


def to_8bit(image: Image.Image, label: str = "image") -> Image.Image:
    """Any Pillow image as an 8-bit mode that ``convert`` handles correctly (same alpha).

    16-bit gray keeps its high byte (and its tRNS color key, as alpha); float images with
    samples in 0–1 are scaled to 0–255; 32-bit integer and other float images are refused,
    since they have no standard display range.
    """
    mode = image.mode
    trns = image.info.get("transparency")
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image.convert("I") if mode != "I" else image, dtype=np.int64)
        gray = Image.fromarray((values >> 8).astype(np.uint8), "L")
        if isinstance(trns, int):
            alpha = np.where(values == trns, 0, 255).astype(np.uint8)
            return Image.merge("LA", (gray, Image.fromarray(alpha, "L")))
        return gray
    if mode == "I":
        raise InputError(f"{label}: 32-bit integer samples have no standard display range; "
                         "convert to 8 or 16 bits first")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise InputError(f"{label}: float samples must lie in 0–1 (found {low:g} to "
                             f"{high:g}); convert to 8 or 16 bits first")
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8), "L")
    if mode == "La":  # premultiplied: Pillow converts it only to LA
        return image.convert("LA")
    if mode == "RGB" and isinstance(trns, tuple) and max(trns) > 255:
        # 16-bit RGB with a tRNS key: Pillow keeps the high byte of each sample, so does the key.
        image = image.copy()
        image.info["transparency"] = tuple(int(v) >> 8 for v in trns)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB or RGBA version of any Pillow image (RGBA only when some pixel is not opaque).

    Raises ``InputError`` for modes with no sensible 8-bit RGB conversion.
    """
    return opaque_as_rgb([to_rgba(upright(image))])[0]


def opaque_as_rgb(images: list[Image.Image]) -> list[Image.Image]:
    """Frames (all RGB or all RGBA) as RGB when every pixel of every frame is opaque: alpha is
    kept only where it says something."""
    if images and images[0].mode == "RGBA" and all(im.getextrema()[3][0] == 255
                                                   for im in images):
        return [im.convert("RGB") for im in images]
    return images


def to_rgba(image: Image.Image, label: str = "image") -> Image.Image:
    """RGB (no alpha in the source) or RGBA (alpha or a transparent color in the source)."""
    image = to_8bit(image, label)
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    target = "RGBA" if has_alpha else "RGB"
    if image.mode == target:
        return image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return image.convert(target)
    except (ValueError, OSError) as exc:
        raise InputError(f"{label}: cannot convert mode {image.mode} to {target} "
                         f"({first_line(exc)})") from None


@dataclass(frozen=True)
class ColorProfile:
    """What to do with a source's ICC profile: the transform to sRGB, and what to embed."""

    transform: Callable[[Image.Image], Image.Image] | None = None
    keep: bytes | None = None


def color_profile(image: Image.Image, *, to_srgb: bool, label: str = "image",
                  log: Log | None = None) -> ColorProfile:
    """Decide from an image's ICC profile how its pixels become the stored RGB values.

    An RGB profile is kept for the output (the palette is fitted on the stored values), or,
    with ``to_srgb``, used to convert the pixels to sRGB. CMYK and gray profiles cannot be
    embedded in an RGB or palette output, so those pixels are always converted to sRGB. A
    profile that cannot be parsed, or does not match the pixels, is dropped with a warning.
    """
    icc = image.info.get("icc_profile")
    if not icc:
        return ColorProfile()
    try:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
    except MemoryError:
        raise
    except Exception as exc:
        if log:
            log(f"warning: {label}: ignoring unreadable ICC profile ({first_line(exc)})")
        return ColorProfile()
    base = image.mode
    kind = {"CMYK": "CMYK", "L": "GRAY", "LA": "GRAY", "1": "GRAY"}.get(
        base, "GRAY" if base.startswith("I") or base == "F" else "RGB")
    if space != kind:
        if log:
            log(f"warning: {label}: ignoring ICC profile for {space} on a {base} image")
        return ColorProfile()
    if space == "RGB" and not to_srgb:
        return ColorProfile(keep=bytes(icc))
    try:
        srgb = ImageCms.createProfile("sRGB")
        cache: dict[tuple[str, str], ImageCms.ImageCmsTransform] = {}

        def transform(frame: Image.Image) -> Image.Image:
            if frame.mode == "1":
                frame = frame.convert("L")
            elif frame.mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
                frame = to_rgba(frame, label)
            alpha = frame.getchannel("A") if frame.mode in ("RGBA", "LA") else None
            source = {"LA": "L", "RGBA": "RGB"}.get(frame.mode, frame.mode)
            if (source, "RGB") not in cache:
                cache[source, "RGB"] = ImageCms.buildTransform(profile, srgb, source, "RGB")
            out = ImageCms.applyTransform(frame.convert(source), cache[source, "RGB"])
            assert out is not None
            if alpha is not None:
                out.putalpha(alpha)
            return out

        probe = Image.new({"CMYK": "CMYK", "GRAY": "L"}.get(space, "RGB"), (1, 1))
        transform(probe)
    except MemoryError:
        raise
    except Exception as exc:
        if log:
            log(f"warning: {label}: ignoring ICC profile that cannot be applied "
                f"({first_line(exc)})")
        return ColorProfile()
    return ColorProfile(transform=transform)
