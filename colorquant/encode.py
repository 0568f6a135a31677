"""Encoding quantized frames into an output format: the writers and their encoder settings.

What each format can hold is :mod:`colorquant.formats`; this module turns the indexed frames
(one shared palette) into the bytes of that format, through Pillow's encoders.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from . import formats

if TYPE_CHECKING:
    from .frames import Frames

#: Disposal as written by each format, from the neutral names used here.
_GIF_DISPOSAL = {"none": 1, "background": 2, "previous": 3}


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
    return dict(formats.get(fmt).params)


def write(handle: BinaryIO, images: list[Image.Image], fmt: str, frames: Frames, *,
          transparent_index: int | None, compress_level: int, strip: bool,
          n_colors: int = 256) -> None:
    """Encode quantized ``"P"`` frames (one shared palette) in ``fmt`` to ``handle``.

    PNG (APNG), GIF, TIFF and BMP keep the palette; WebP is lossless RGB(A); TIFF falls back to
    RGBA when the palette has alpha; BMP (whose alpha few readers honour) and JPEG are shown
    over white; JPEG is RGB. Formats without frames get the first frame only (the caller
    warns). ``n_colors`` (the palette size) picks the PNG zlib strategy.
    """
    row = formats.get(fmt)
    has_alpha = images[0].palette is not None and images[0].palette.mode == "RGBA"
    params: dict[str, object] = dict(save_params(fmt, compress_level=compress_level,
                                                 n_colors=n_colors))
    if not strip:
        if frames.icc_profile and row.icc:
            params["icc_profile"] = frames.icc_profile
        if frames.dpi and row.dpi:
            params["dpi"] = frames.dpi
    if fmt == "GIF" and transparent_index is not None:
        params["transparency"] = transparent_index
    if fmt == "PNG" and has_alpha:
        # tRNS without its trailing opaque entries (readers take missing ones as opaque):
        # smaller files, as pngquant writes them; Pillow would write one per palette entry.
        alpha = bytes(images[0].getpalette("RGBA")[3::4][:n_colors]).rstrip(b"\xff")
        if alpha:
            params["transparency"] = alpha
    if has_alpha and row.alpha == "none":
        images = [flatten(im) for im in images]
        has_alpha = False
    if not row.palette or (has_alpha and not row.palette_alpha):
        images = [im.convert("RGBA" if has_alpha else "RGB") for im in images]
    durations = frames.durations
    disposal = frames.disposal
    if not row.multi_frame:
        images = images[:1]
    elif row.frames == "animation" and len(images) > 1:
        images, durations, disposal = _merge_repeats(images, durations, disposal)
    if fmt == "GIF" and durations:
        durations = _centiseconds(durations)
    if len(images) > 1:
        params.update(save_all=True, append_images=images[1:])
        if durations and row.frames == "animation":
            params["duration"] = durations
        if row.frames == "animation":
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
    if row.frames == "pages" and len(images) > 1:
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
