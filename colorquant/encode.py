"""Encoding quantized frames into an output format: the writers and their encoder settings.

What each format can hold is :mod:`colorquant.formats`; this module turns the indexed frames
(one shared palette) into the bytes of that format. Single-frame PNGs are written here chunk
by chunk (Pillow's PNG writer offers neither libdeflate nor a choice of row layout): IHDR,
iCCP, PLTE, a trimmed tRNS, pHYs, the IDAT data (unfiltered rows deflated by libdeflate),
IEND; ``--optimize`` searches further (:func:`optimized`). The other formats, and animated
PNGs, go through Pillow's encoders.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from . import formats
from .options import MAX_OPTIMIZE, SaveOptions
from .pixels import band_rows, bands

if TYPE_CHECKING:
    from .frames import Frames

#: Disposal as written by each format, from the neutral names used here.
_GIF_DISPOSAL = {"none": 1, "background": 2, "previous": 3}


def save_params(fmt: str, *, compress_level: int | None, optimize: int = 0,
                ) -> dict[str, object]:
    """Pillow's encoder arguments for a format: deterministic, lossless where the format
    allows (for animated PNGs: zlib at ``compress_level``, at most zlib's 9, which is also
    the default; single-frame PNGs are written by :func:`png_bytes`), with the format's
    ``--optimize`` settings when ``optimize``."""
    if fmt == "PNG":
        return {"compress_level": 9 if compress_level is None else min(compress_level, 9)}
    row = formats.get(fmt)
    return {**row.params, **(row.optimized if optimize else {})}


def write(handle: BinaryIO, images: list[Image.Image], fmt: str, frames: Frames, *,
          transparent_index: int | None, save: SaveOptions, n_colors: int = 256,
          keep_order: bool = False) -> None:
    """Encode quantized ``"P"`` frames (one shared palette) in ``fmt`` to ``handle``.

    PNG (APNG), GIF, TIFF and BMP keep the palette; WebP is lossless RGB(A); TIFF falls back to
    RGBA when the palette has alpha; BMP (whose alpha few readers honour) and JPEG are shown
    over white; JPEG is RGB. Formats without frames get the first frame only (the caller
    warns). A single-frame PNG is written by :func:`optimized` (at ``save``'s
    ``compress_level``, or :func:`auto_level` when None, and ``optimize``; ``keep_order``: the
    palette order is the user's), an APNG by Pillow; ``save.strip`` leaves the metadata out.
    """
    row = formats.get(fmt)
    has_alpha = images[0].palette is not None and images[0].palette.mode == "RGBA"
    if fmt == "PNG" and len(images) == 1 and images[0].mode == "P":
        palette = _palette(images[0], has_alpha, n_colors)
        metadata = Metadata() if save.strip else Metadata(frames.icc_profile, frames.dpi)
        handle.write(optimized(images[0], palette, level=save.compress_level,
                               optimize=save.optimize, metadata=metadata,
                               keep_order=keep_order))
        return
    params: dict[str, object] = dict(save_params(fmt, compress_level=save.compress_level,
                                                 optimize=save.optimize))
    if not save.strip:
        if frames.icc_profile and row.icc:
            params["icc_profile"] = frames.icc_profile
        if frames.dpi and row.dpi:
            params["dpi"] = frames.dpi
    if fmt == "GIF" and transparent_index is not None:
        params["transparency"] = transparent_index
    if fmt == "PNG" and has_alpha:
        # tRNS without its trailing opaque entries (readers take missing ones as opaque):
        # smaller files, as pngquant writes them; Pillow would write one per palette entry.
        alpha = trns(_palette(images[0], has_alpha, n_colors))
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


def _palette(image: Image.Image, has_alpha: bool, n_colors: int) -> np.ndarray:
    """The first ``n_colors`` palette entries of a ``"P"`` image, (n, 3|4) uint8."""
    channels = 4 if has_alpha else 3
    return np.frombuffer(bytes(image.getpalette("RGBA" if has_alpha else "RGB")),
                         dtype=np.uint8).reshape(-1, channels)[:n_colors]


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


# --- the PNG encoder ------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG row filter types (PNG specification, section 9).
NONE, SUB, UP, AVERAGE, PAETH = range(5)
FILTERS = (NONE, SUB, UP, AVERAGE, PAETH)
#: Largest IDAT chunk written: the deflated stream is cut in pieces of this size.
IDAT_SIZE = 1 << 20
#: Pixels of the bands in which :func:`image_scanlines` reads a quantized image's indices.
BAND_PIXELS = 1 << 20


def bit_depth(n_colors: int) -> int:
    """Fewest bits per index (1, 2, 4 or 8) that hold ``n_colors`` palette entries."""
    for bits in (1, 2, 4):
        if n_colors <= 1 << bits:
            return bits
    return 8


def pack_rows(indices: np.ndarray, bits: int) -> np.ndarray:
    """Palette indices (H, W) uint8 packed ``bits`` to a pixel, most significant first, each
    row padded to whole bytes: the scanlines of a PNG of that bit depth, (H, ceil(W·bits/8))."""
    if bits == 8:
        return np.ascontiguousarray(indices, dtype=np.uint8)
    height, width = indices.shape
    per = 8 // bits
    padded = -(-width // per) * per
    rows = np.zeros((height, padded), dtype=np.uint8)
    rows[:, :width] = indices
    rows = rows.reshape(height, padded // per, per)
    out = np.zeros(rows.shape[:2], dtype=np.uint8)
    for i in range(per):
        out |= rows[:, :, i] << np.uint8(8 - bits * (i + 1))
    return out


def unpack_rows(rows: np.ndarray, bits: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: (H, W) indices from packed scanlines."""
    if bits == 8:
        return rows[:, :width]
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    parts = [(rows >> np.uint8(8 - bits * (i + 1))) & mask for i in range(per)]
    return np.stack(parts, axis=2).reshape(rows.shape[0], -1)[:, :width]


def filter_rows(rows: np.ndarray, kind: int) -> np.ndarray:
    """Every scanline filtered with one PNG filter type (one byte a pixel unit, as for
    palette images of any bit depth), uint8 of the same shape."""
    raw = rows.astype(np.int16)
    if kind == NONE:
        return rows.copy()
    left = np.zeros_like(raw)
    left[:, 1:] = raw[:, :-1]
    up = np.zeros_like(raw)
    up[1:] = raw[:-1]
    if kind == SUB:
        out = raw - left
    elif kind == UP:
        out = raw - up
    elif kind == AVERAGE:
        out = raw - (left + up) // 2
    elif kind == PAETH:
        upleft = np.zeros_like(raw)
        upleft[1:, 1:] = raw[:-1, :-1]
        guess = left + up - upleft
        da, db, dc = np.abs(guess - left), np.abs(guess - up), np.abs(guess - upleft)
        out = raw - np.where((da <= db) & (da <= dc), left, np.where(db <= dc, up, upleft))
    else:
        raise ValueError(f"unknown PNG filter type {kind!r}")
    return (out & 0xFF).astype(np.uint8)


def trns(palette: np.ndarray) -> bytes:
    """The tRNS alpha values: up to the last entry that is not opaque (readers take missing
    entries as opaque), empty when every entry is opaque or the palette has no alpha."""
    if palette.shape[1] != 4:
        return b""
    return bytes(palette[:, 3]).rstrip(b"\xff")


#: Largest image (pixels) that gets the stronger default deflate and the whole ``--optimize``
#: search; above it both step down, so that a camera-sized photo keeps a bounded encode time.
EFFORT_PIXELS = 4_000_000
#: libdeflate's strongest level (near-optimal parsing, most passes).
MAX_LEVEL = 12
#: Data that libdeflate's fastest level shrinks at least this many times are "flat" (drawings,
#: clip art, screenshots: long runs and repeats) and get one more near-optimal pass.
FLAT_RATIO = 8
#: Above :data:`EFFORT_PIXELS`, data of this many palette colors or more that are not flat
#: deflate smaller at libdeflate's level 7 than at 8, in about half the time: 24 MP photos,
#: level 7 against 8, -1.3% bytes at 256 colors (every one of 5 photos smaller), -1.0% at
#: 192 (one photo +0.1%), but -0.3% at 128 (one +1.0%) and +1.3% to +2.8% at 16 to 64;
#: flat data lose at 7 (clip art upscaled to 24 MP: +1% to +41%), and keep 8.
LAZY_COLORS = 192
#: Above :data:`EFFORT_PIXELS` the flatness is measured on this many bytes of the data, in
#: 16 evenly spaced slices (the whole data at level 1 costs about 80 ms at 24 MP).
FLAT_SAMPLE = 1 << 20


def auto_level(data: bytes | memoryview, pixels: int, colors: int = 256) -> int:
    """The libdeflate level used when ``--compress-level`` is not given, from the image's
    size, its palette's ``colors`` and a quick level-1 pass over its data: up to
    :data:`EFFORT_PIXELS`, 10 (the first near-optimal parsing level, several percent smaller
    than the lazy levels), or 11 for flat data (:data:`FLAT_RATIO`), where the extra pass
    finds long repeats that level 10 misses; above :data:`EFFORT_PIXELS`, the lazy levels, a
    few times faster than 10: 7 for :data:`LAZY_COLORS` colors or more whose data (a sample
    of :data:`FLAT_SAMPLE` bytes) are not flat, else 8. Depends only on the data, so outputs
    stay byte-identical."""
    if pixels > EFFORT_PIXELS:
        return 7 if colors >= LAZY_COLORS and not _flat(_sample(data, FLAT_SAMPLE)) else 8
    return 11 if _flat(data) else 10


def _flat(data: bytes | memoryview) -> bool:
    """Whether libdeflate's level 1 shrinks ``data`` :data:`FLAT_RATIO` times or more."""
    return len(data) >= FLAT_RATIO * len(compress(data, 1))


def _sample(data: bytes | memoryview, size: int, slices: int = 16) -> bytes | memoryview:
    """About ``size`` bytes of ``data`` in ``slices`` evenly spaced slices (all of it when
    it is not longer)."""
    if len(data) <= size:
        return data
    view, step, part = memoryview(data), len(data) // slices, size // slices
    return b"".join(view[i * step : i * step + part] for i in range(slices))


def deflate_level(level: int) -> int:
    """The libdeflate level of a colorquant PNG level (0–12, the same numbers)."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"PNG level must be from 0 to {MAX_LEVEL}, got {level}")
    return level


def compress(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """A zlib stream (RFC 1950, as IDAT holds) of ``data`` from libdeflate at ``level``.

    libdeflate's output depends only on the data, the level and its version (pinned by the
    wheel), never on threads or the machine, so outputs stay byte-identical.
    """
    return bytes(_zlib(data, level))


def _zlib(data: bytes | bytearray | memoryview, level: int) -> bytearray:
    """:func:`compress`, as the bytearray libdeflate's binding returns (not copied)."""
    import deflate

    return deflate.zlib_compress(data, deflate_level(level))


def scanlines(rows: np.ndarray, kind: int = NONE) -> bytes:
    """The filtered image data: each packed row prefixed by its filter type byte."""
    return _scanline_array(rows, kind).tobytes()


def _scanline_array(rows: np.ndarray, kind: int = NONE) -> np.ndarray:
    """:func:`scanlines` as a (H, row bytes + 1) array, not copied into a bytes object."""
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = kind
    out[:, 1:] = filter_rows(rows, kind) if kind != NONE else rows
    return out


def image_scanlines(image: Image.Image, bits: int) -> np.ndarray:
    """The unfiltered scanlines of a ``"P"`` image at ``bits`` per index, as
    :func:`_scanline_array` of :func:`pack_rows` gives them, its indices read out of Pillow
    in bands of about :data:`BAND_PIXELS` pixels: no whole copy of the indices is made
    beside the scanlines (24 MB at 24 MP)."""
    width, height = image.size
    out = np.zeros((height, -(-width * bits // 8) + 1), dtype=np.uint8)  # filter type 0
    top = 0
    for band in bands(image, band_rows(width, BAND_PIXELS)):
        indices = np.frombuffer(band.tobytes(), dtype=np.uint8).reshape(band.height, width)
        out[top : top + band.height, 1:] = pack_rows(indices, bits)
        top += band.height
    return out


@dataclass(frozen=True)
class Metadata:
    """What a PNG keeps of its source besides the pixels."""

    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None


def png_bytes(indices: np.ndarray, palette: np.ndarray, *, level: int | None,
              bits: int | None = None, row_filter: int = NONE,
              metadata: Metadata = Metadata()) -> bytes:
    """An indexed PNG of ``indices`` (H, W) uint8 with ``palette`` (k, 3|4) uint8.

    Every row takes ``row_filter`` (filter type 0, none, by default: indexed data has no
    numeric order for a difference to exploit); ``bits`` per index defaults to the fewest
    that hold the palette. The data are deflated by libdeflate at ``level`` (None:
    :func:`auto_level`); the palette is written as given, and tRNS only up to its last entry
    that is not opaque.
    """
    indices = np.asarray(indices, dtype=np.uint8)
    palette, bits = _png_palette(palette, bits)
    height, width = indices.shape
    data = _deflated(_scanline_array(pack_rows(indices, bits), row_filter), indices.size,
                     len(palette), level)
    return bytes(_png_file(data, width, height, bits, palette, metadata))


def image_png(image: Image.Image, palette: np.ndarray, *, level: int | None,
              bits: int | None = None, metadata: Metadata = Metadata()) -> bytearray:
    """:func:`png_bytes` of a ``"P"`` image's indices (filter type 0), the same bytes, in
    less memory: the scanlines come from :func:`image_scanlines`, and the file is not copied
    into a bytes object."""
    palette, bits = _png_palette(palette, bits)
    width, height = image.size
    data = _deflated(image_scanlines(image, bits), width * height, len(palette), level)
    return _png_file(data, width, height, bits, palette, metadata)


def _png_palette(palette: np.ndarray, bits: int | None) -> tuple[np.ndarray, int]:
    """The palette as uint8, checked, and the bits per index (the fewest by default)."""
    palette = np.asarray(palette, dtype=np.uint8)
    if not 1 <= len(palette) <= 256 or palette.ndim != 2 or palette.shape[1] not in (3, 4):
        raise ValueError(f"palette must be (1–256, 3|4) uint8, got shape {palette.shape}")
    bits = bits or bit_depth(len(palette))
    if len(palette) > 1 << bits:
        raise ValueError(f"{len(palette)} palette entries do not fit in {bits} bits")
    return palette, bits


def _deflated(scan: np.ndarray, pixels: int, colors: int, level: int | None) -> bytearray:
    """The zlib stream of scanlines ``scan`` (:func:`_scanline_array`) at ``level`` (None:
    :func:`auto_level`), read in place."""
    data = memoryview(scan.reshape(-1))
    return _zlib(data, auto_level(data, pixels, colors) if level is None else level)


def _png_file(data: bytearray, width: int, height: int, bits: int, palette: np.ndarray,
              metadata: Metadata) -> bytearray:
    """The chunks of the PNG around the zlib stream ``data``, in one buffer (the IDAT pieces
    are not copied out of ``data`` first)."""
    out = bytearray(PNG_SIGNATURE)

    def add(kind: bytes, body: bytes | memoryview) -> None:  # length, type, body, CRC
        out.extend(struct.pack(">I", len(body)))
        out.extend(kind)
        out.extend(body)
        out.extend(struct.pack(">I", zlib.crc32(body, zlib.crc32(kind))))

    add(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, 3, 0, 0, 0))
    if metadata.icc_profile:
        add(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(metadata.icc_profile, 9))
    add(b"PLTE", palette[:, :3].tobytes())
    alpha = trns(palette)
    if alpha:
        add(b"tRNS", alpha)
    if metadata.dpi:
        per_metre = (int(metadata.dpi[0] / 0.0254 + 0.5), int(metadata.dpi[1] / 0.0254 + 0.5))
        add(b"pHYs", struct.pack(">IIB", *per_metre, 1))
    view = memoryview(data)
    for i in range(0, len(data), IDAT_SIZE):
        add(b"IDAT", view[i : i + IDAT_SIZE])
    add(b"IEND", b"")
    return out


def optimize_deflate(pixels: int) -> int:
    """The libdeflate level of every ``--optimize`` level above 0: the strongest up to
    :data:`EFFORT_PIXELS`, the default's near-optimal level above (the strongest costs
    several seconds a megapixel more there)."""
    return MAX_LEVEL if pixels <= EFFORT_PIXELS else 10


def needs_oxipng(optimize: int) -> bool:
    """Whether an ``--optimize`` level needs oxipng (the ``optimize`` extra)."""
    return optimize >= 2


def runs_oxipng(optimize: int, pixels: int) -> bool:
    """Whether oxipng's search runs: at level 2, on images up to :data:`EFFORT_PIXELS`
    (its trials re-deflate the whole image several times)."""
    return needs_oxipng(optimize) and pixels <= EFFORT_PIXELS


def oxipng_missing() -> bool:
    """Whether oxipng (``pyoxipng``) cannot be imported."""
    import importlib.util

    return importlib.util.find_spec("oxipng") is None


def optimized(image: Image.Image, palette: np.ndarray, *, level: int | None, optimize: int,
              metadata: Metadata = Metadata(), keep_order: bool = False) -> bytes | bytearray:
    """The smallest PNG of a ``"P"`` image's indices found at an ``--optimize`` level; every
    candidate decodes to the same pixels, and each reads the indices out of the image in
    bands (:func:`image_png`).

    0: the default encoder at ``level`` (None: :func:`auto_level`). 1: libdeflate at
    :func:`optimize_deflate`, with the rows both packed (at 16 colors or fewer) and one byte
    a pixel, the smaller kept. 2: level 1, then (up to :data:`EFFORT_PIXELS`) oxipng's full
    search (row filters, palette orders and reductions, its own deflate), the smaller kept;
    with ``keep_order`` oxipng may not reorder the palette. Each step is deterministic
    (oxipng's result does not depend on its thread count), and the effort depends only on
    the image's size.
    """
    if not 0 <= optimize <= MAX_OPTIMIZE:
        raise ValueError(f"optimize must be from 0 to {MAX_OPTIMIZE}, got {optimize!r}")
    if optimize == 0:
        return image_png(image, palette, level=level, metadata=metadata)
    size = image.width * image.height
    strongest = optimize_deflate(size)
    best = image_png(image, palette, level=strongest, metadata=metadata)
    if bit_depth(len(palette)) < 8:
        wide = image_png(image, palette, level=strongest, bits=8, metadata=metadata)
        best = wide if len(wide) < len(best) else best
    if runs_oxipng(optimize, size):
        import oxipng

        found = oxipng.optimize_from_memory(
            bytes(best), level=2, fast_evaluation=False, palette_reduction=not keep_order,
            color_type_reduction=not keep_order, grayscale_reduction=not keep_order,
            deflate=oxipng.Deflaters.libdeflater(strongest))
        best = found if len(found) < len(best) else best
    return best
