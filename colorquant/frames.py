"""Still and multi-frame images: read every frame upright in one mode; write them back.

Pillow hands over each frame of an animated GIF, APNG or animated WebP already composited
onto the full canvas, so every frame read here is a complete picture. The writers get complete
frames too, and Pillow's encoders store only what changed, following the disposal given.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from . import encode, io
from .errors import ImageTooLargeError, InputError
from .memory import as_memory_error, is_out_of_memory
from .options import DEFAULT_MAX_PIXELS

Log = Callable[[str], None]

#: Disposal as written by each format, from the neutral names used here.
_GIF_DISPOSAL = {"none": 1, "background": 2, "previous": 3}
#: Output formats that hold several frames.
MULTI_FRAME_FORMATS = frozenset({"PNG", "GIF", "WEBP", "TIFF"})
#: Output formats that embed an ICC profile; the others are read as sRGB by every viewer.
PROFILE_FORMATS = frozenset({"PNG", "TIFF", "WEBP", "JPEG"})


@dataclass(frozen=True, eq=False)
class Frames:
    """The frames of one input, upright, all RGB or all RGBA, with what is kept of its metadata.

    Attributes
    ----------
    images : list of PIL.Image.Image
        One or more frames, all ``"RGB"`` or all ``"RGBA"`` (the pages of a TIFF may differ
        in size; an animation's frames only when later ones grow its canvas, as Pillow
        enlarges a GIF's to hold a frame beyond it).
    durations : list of int or None
        Display time of each frame in milliseconds, when the source has them.
    loop : int or None
        Loop count of the source animation (0 = forever), when it has one.
    disposal : list of str or None
        ``"none"``, ``"background"`` or ``"previous"`` per frame, when the source has them.
    icc_profile : bytes or None
        The RGB ICC profile to embed (None after a conversion to sRGB).
    dpi : tuple of float or None
        Resolution of the source, when it has one.
    pages : bool
        Whether the frames are a document's pages (a TIFF), not an animation's frames (the
        messages name them so).
    """

    images: list[Image.Image]
    durations: list[int] | None = None
    loop: int | None = None
    disposal: list[str] | None = None
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    pages: bool = False

    @property
    def mode(self) -> str:
        return self.images[0].mode

    @property
    def animated(self) -> bool:
        return len(self.images) > 1


def _disposal(image: Image.Image) -> str | None:
    """The disposal of the current frame in neutral terms, if the format has one."""
    if image.format == "GIF":
        method = getattr(image, "disposal_method", 0)
        return {2: "background", 3: "previous"}.get(method, "none")
    if image.format == "PNG" and "disposal" in image.info:
        return {1: "background", 2: "previous"}.get(image.info["disposal"], "none")
    return None


def read(image: Image.Image, *, frame: int | None = None, to_srgb: bool = False,
         max_pixels: int = DEFAULT_MAX_PIXELS, label: str = "image", log: Log | None = None,
         ) -> Frames:
    """Every frame of an opened image (or just ``frame``), upright and in sRGB(A) uint8.

    All frames are converted with the same rules (see :func:`colorquant.io.to_rgba`) and the
    same color profile; they are all RGBA when any pixel of any frame is not opaque.
    """
    profile = io.color_profile(image, to_srgb=to_srgb, label=label, log=log)
    n_frames = getattr(image, "n_frames", 1)
    indices = [frame] if frame is not None else list(range(n_frames))
    loop = image.info.get("loop")
    dpi = image.info.get("dpi")
    images: list[Image.Image] = []
    durations: list[int] = []
    disposals: list[str] = []
    first = image.size
    decoded = 0  # pixels of the frames so far, each at the size it decodes to
    for index in indices:
        try:
            with io.pixel_limit(max_pixels, label):
                if image.tell() != index:
                    image.seek(index)
                decoded += image.width * image.height
                if decoded > max_pixels:  # a frame grew the canvas past what headers said
                    raise ImageTooLargeError(
                        f"{label}: frame {index} is {image.width}x{image.height} (the first "
                        f"{first[0]}x{first[1]}): the frames up to it are {decoded:,} pixels, "
                        f"over the limit of {max_pixels:,} (see --max-pixels, or take one "
                        "frame with --frame)")
                image.load()
                current = io.upright(image)
                if current is image and len(indices) > 1:
                    current = image.copy()  # the next seek reuses the image's memory
        except InputError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):  # not damage: an allocation failed while decoding
                raise as_memory_error(exc) from None
            raise InputError(f"{label}: corrupt or truncated frame {index} "
                             f"({io._describe(exc)})") from None
        if current is not image:
            current.info = dict(image.info)
        current = io.to_8bit(current, label)
        if profile.transform is not None:
            current = profile.transform(current)
        images.append(io.to_rgba(current, label))
        if "duration" in image.info:
            durations.append(int(image.info["duration"]))
        kind = _disposal(image)
        if kind is not None:
            disposals.append(kind)
    if any(im.mode == "RGBA" for im in images):
        images = [im if im.mode == "RGBA" else im.convert("RGBA") for im in images]
        if all(im.getextrema()[3][0] == 255 for im in images):
            images = [im.convert("RGB") for im in images]
    good_dpi = None
    with contextlib.suppress(Exception):
        x, y = (float(v) for v in dpi)  # type: ignore[union-attr]
        if x > 0 and y > 0:
            good_dpi = (x, y)
    return Frames(
        images=images,
        durations=durations if len(durations) == len(images) and len(images) > 1 else None,
        loop=int(loop) if isinstance(loop, int) else None,
        disposal=disposals if len(disposals) == len(images) and len(images) > 1 else None,
        icc_profile=profile.keep,
        dpi=good_dpi,
        pages=image.format == "TIFF" and len(images) > 1,
    )


def threshold_alpha(images: list[Image.Image]) -> tuple[list[Image.Image], bool]:
    """RGBA frames with alpha made 0 or 255 (cut at 128), and whether any alpha was partial.

    For formats with a single transparent palette index (GIF): the palette is then fitted to
    what the format can show.
    """
    if not images or images[0].mode != "RGBA":
        return images, False
    out = []
    partial = False
    for im in images:
        rgba = np.array(im)
        alpha = rgba[..., 3]
        partial = partial or bool(((alpha > 0) & (alpha < 255)).any())
        rgba[..., 3] = np.where(alpha >= 128, 255, 0).astype(np.uint8)
        out.append(Image.fromarray(rgba, "RGBA"))
    if all(im.getextrema()[3][0] == 255 for im in out):
        out = [im.convert("RGB") for im in out]
    return out, partial


def write(handle: BinaryIO, images: list[Image.Image], fmt: str, frames: Frames, *,
          transparent_index: int | None, compress_level: int, strip: bool,
          n_colors: int = 256, optimize: int = 0, keep_order: bool = False) -> None:
    """Encode quantized ``"P"`` frames (one shared palette) in ``fmt`` to ``handle``.

    PNG (APNG), GIF, TIFF and BMP keep the palette; WebP is lossless RGB(A); TIFF falls back to
    RGBA when the palette has alpha; BMP (whose alpha few readers honour) and JPEG are shown
    over white; JPEG is RGB. Formats without frames get the first frame only (the caller
    warns). A single-frame PNG is written by :mod:`colorquant.encode` (at ``compress_level``,
    and ``optimize``; ``keep_order``: the palette order is the user's), an APNG by Pillow.
    """
    has_alpha = images[0].palette is not None and images[0].palette.mode == "RGBA"
    if fmt == "PNG" and len(images) == 1 and images[0].mode == "P":
        channels = 4 if has_alpha else 3
        palette = np.frombuffer(bytes(images[0].getpalette("RGBA" if has_alpha else "RGB")),
                                dtype=np.uint8).reshape(-1, channels)[:n_colors]
        metadata = encode.Metadata() if strip else encode.Metadata(frames.icc_profile,
                                                                   frames.dpi)
        handle.write(encode.optimized(np.asarray(images[0]), palette, level=compress_level,
                                      optimize=optimize, metadata=metadata,
                                      keep_order=keep_order))
        return
    params: dict[str, object] = dict(io.save_params(fmt, compress_level=compress_level,
                                                    optimize=optimize))
    if not strip:
        if frames.icc_profile and fmt in PROFILE_FORMATS:
            params["icc_profile"] = frames.icc_profile
        if frames.dpi and fmt in ("PNG", "TIFF", "JPEG", "BMP"):
            params["dpi"] = frames.dpi
    if fmt == "GIF" and transparent_index is not None:
        params["transparency"] = transparent_index
    if fmt == "PNG" and has_alpha:
        # tRNS without its trailing opaque entries (readers take missing ones as opaque):
        # smaller files, as pngquant writes them; Pillow would write one per palette entry.
        alpha = bytes(images[0].getpalette("RGBA")[3::4][:n_colors]).rstrip(b"\xff")
        if alpha:
            params["transparency"] = alpha
    if fmt == "WEBP":
        images = [im.convert("RGBA" if has_alpha else "RGB") for im in images]
    elif fmt == "TIFF" and has_alpha:
        images = [im.convert("RGBA") for im in images]
    elif fmt in ("BMP", "JPEG") and has_alpha:
        images = [flatten(im) for im in images]
    if fmt == "JPEG":
        images = [im.convert("RGB") for im in images]
    durations = frames.durations
    disposal = frames.disposal
    if fmt not in MULTI_FRAME_FORMATS:
        images = images[:1]
    elif fmt != "TIFF" and len(images) > 1:
        images, durations, disposal = _merge_repeats(images, durations, disposal)
    if fmt == "GIF" and durations:
        durations = _centiseconds(durations)
    if len(images) > 1:
        params.update(save_all=True, append_images=images[1:])
        if durations and fmt in ("PNG", "GIF", "WEBP"):
            params["duration"] = durations
        if fmt in ("PNG", "GIF", "WEBP"):
            if frames.loop is not None:
                params["loop"] = frames.loop
            elif fmt != "GIF":
                params["loop"] = 1  # the source plays once
        if fmt == "GIF" and transparent_index is not None:
            # Complete frames with holes: clear each frame before the next, or the previous
            # frame would show through the transparent pixels.
            params["disposal"] = 2
        elif disposal and fmt == "GIF":
            params["disposal"] = [_GIF_DISPOSAL[d] for d in disposal]
        if fmt == "GIF":
            params["optimize"] = False
    if fmt == "TIFF" and len(images) > 1:
        _save_tiff_pages(images, handle, params)
    else:
        images[0].save(handle, format=fmt, **params)
    if fmt == "TIFF" and images[0].mode == "P":
        _widen_tiff_colormaps(handle)


def _save_tiff_pages(images: list[Image.Image], handle: BinaryIO,
                     params: dict[str, object]) -> None:
    """Every image as a page of one TIFF, the bytes Pillow's ``save_all`` writes, in time
    linear in the page count: Pillow's page appender walks the page chain from the first page
    for every page it adds (n²/2 steps: a 2,236-frame GIF of 1x1 frames took 9 s to write as
    TIFF); this one goes on from the link that points at the page just written."""
    from PIL import TiffImagePlugin  # only for TIFF outputs

    class PageAppender(TiffImagePlugin.AppendingTiffWriter):
        link: int | None = None

        def skipIFDs(self) -> None:  # Pillow's name
            if self.link is not None:
                self.f.seek(self.link)  # finalize() pointed it at the page just written
            super().skipIFDs()
            self.link = self.whereToWriteNewIFDOffset

    info = {k: v for k, v in params.items() if k not in ("save_all", "append_images")}
    with PageAppender(handle) as pages:
        for image in images:
            image.load()  # as save() does: a palette set since reaches the image
            image.encoderinfo = dict(info)
            image.encoderconfig = ()
            TiffImagePlugin._save(image, pages, "")  # Pillow's one-page writer
            pages.newFrame()


def _widen_tiff_colormaps(handle: BinaryIO) -> None:
    """Rewrite every TIFF ColorMap (tag 320) written by Pillow from 8-bit values × 256 to
    × 257, so that white is 65535, as TIFF 6.0 means it (Pillow writes 65280, which
    ImageMagick reads one level darker); Pillow and libtiff read both back the same."""
    end = handle.tell()
    handle.seek(0)
    head = handle.read(8)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        handle.seek(end)
        return
    order = "<" if head[:2] == b"II" else ">"
    if struct.unpack(order + "H", head[2:4])[0] != 42:  # BigTIFF: not written here
        handle.seek(end)
        return
    offset = struct.unpack(order + "I", head[4:8])[0]
    seen: set[int] = set()
    while offset and offset not in seen:
        seen.add(offset)
        handle.seek(offset)
        (count,) = struct.unpack(order + "H", handle.read(2))
        entries = handle.read(12 * count)
        (following,) = struct.unpack(order + "I", handle.read(4))
        for i in range(count):
            tag, kind, n, where = struct.unpack(order + "HHII", entries[12 * i:12 * i + 12])
            if tag == 320 and kind == 3 and n * 2 > 4:  # SHORT values stored at an offset
                handle.seek(where)
                values = struct.unpack(f"{order}{n}H", handle.read(2 * n))
                handle.seek(where)
                handle.write(struct.pack(f"{order}{n}H", *(v | v >> 8 for v in values)))
        offset = following
    handle.seek(end)


def _centiseconds(durations: list[int]) -> list[int]:
    """Millisecond delays made multiples of 10 ms (GIF stores centiseconds, and Pillow cuts
    the rest) so that each frame still starts at its time rounded to 10 ms: the total is
    kept (75 ms frames become 80, 70, 80, 70 … instead of all 70)."""
    out = []
    start = elapsed = 0
    for duration in durations:
        elapsed += max(0, int(duration))
        end = (elapsed + 5) // 10
        out.append(10 * (end - start))
        start = end
    return out


def flatten(image: Image.Image) -> Image.Image:
    """A ``"P"`` image with an RGBA palette shown over white: the palette entries blended."""
    rgba = np.array(image.getpalette("RGBA"), dtype=np.float64).reshape(-1, 4)
    alpha = rgba[:, 3:] / 255.0
    rgb = np.rint(rgba[:, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    out = image.copy()
    out.info.pop("transparency", None)
    out.putpalette(rgb.tobytes(), "RGB")
    return out


def _merge_repeats(images: list[Image.Image], durations: list[int] | None,
                   disposal: list[str] | None,
                   ) -> tuple[list[Image.Image], list[int] | None, list[str] | None]:
    """Consecutive identical frames shown as one frame for their summed duration."""
    keep = [0]
    merged = list(durations) if durations else None
    for i in range(1, len(images)):
        if images[i].tobytes() == images[keep[-1]].tobytes():
            if merged is not None:
                merged[keep[-1]] += merged[i]
            continue
        keep.append(i)
    return ([images[i] for i in keep], [merged[i] for i in keep] if merged else None,
            [disposal[i] for i in keep] if disposal else None)
