"""The PNG encoder for indexed images: chunks written here, the data deflated by zlib.

Pillow's PNG writer offers neither row filters nor zlib's memory level for palette images,
so single-frame indexed PNGs are written here: IHDR, iCCP, pHYs, PLTE, a trimmed tRNS and
the IDAT data (filtered rows, deflated by zlib), IEND. The palette order is chosen here too
(:func:`palette_order`): it changes no pixel, only which index each color has.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .options import MAX_OPTIMIZE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG row filter types (PNG specification, section 9).
NONE, SUB, UP, AVERAGE, PAETH = range(5)
FILTERS = (NONE, SUB, UP, AVERAGE, PAETH)
#: Largest IDAT chunk written: the deflated stream is cut in pieces of this size.
IDAT_SIZE = 1 << 20


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


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def trns(palette: np.ndarray) -> bytes:
    """The tRNS alpha values: up to the last entry that is not opaque (readers take missing
    entries as opaque), empty when every entry is opaque or the palette has no alpha."""
    if palette.shape[1] != 4:
        return b""
    return bytes(palette[:, 3]).rstrip(b"\xff")


def deflate_level(level: int) -> int:
    """The libdeflate level of a colorquant PNG level (0–12, the same numbers)."""
    if not 0 <= level <= 12:
        raise ValueError(f"PNG level must be from 0 to 12, got {level}")
    return level


def compress(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """A zlib stream (RFC 1950, as IDAT holds) of ``data`` from libdeflate at ``level``.

    libdeflate's output depends only on the data, the level and its version (pinned by the
    wheel), never on threads or the machine, so outputs stay byte-identical.
    """
    import deflate

    return bytes(deflate.zlib_compress(data, deflate_level(level)))


def scanlines(rows: np.ndarray, kind: int = NONE) -> bytes:
    """The filtered image data: each packed row prefixed by its filter type byte."""
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = kind
    out[:, 1:] = filter_rows(rows, kind) if kind != NONE else rows
    return out.tobytes()


@dataclass(frozen=True)
class Metadata:
    """What a PNG keeps of its source besides the pixels."""

    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None


def png_bytes(indices: np.ndarray, palette: np.ndarray, *, level: int,
              bits: int | None = None, row_filter: int = NONE,
              metadata: Metadata = Metadata()) -> bytes:
    """An indexed PNG of ``indices`` (H, W) uint8 with ``palette`` (k, 3|4) uint8.

    Every row takes ``row_filter`` (filter type 0, none, by default: indexed data has no
    numeric order for a difference to exploit); ``bits`` per index defaults to the fewest
    that hold the palette. The data are deflated by libdeflate at ``level``; the palette is
    written as given, and tRNS only up to its last entry that is not opaque.
    """
    indices = np.asarray(indices, dtype=np.uint8)
    palette = np.asarray(palette, dtype=np.uint8)
    height, width = indices.shape
    if not 1 <= len(palette) <= 256 or palette.ndim != 2 or palette.shape[1] not in (3, 4):
        raise ValueError(f"palette must be (1–256, 3|4) uint8, got shape {palette.shape}")
    bits = bits or bit_depth(len(palette))
    if len(palette) > 1 << bits:
        raise ValueError(f"{len(palette)} palette entries do not fit in {bits} bits")
    parts = [PNG_SIGNATURE,
             chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, 3, 0, 0, 0))]
    if metadata.icc_profile:
        parts.append(chunk(b"iCCP", b"ICC Profile\x00\x00"
                           + zlib.compress(metadata.icc_profile, 9)))
    parts.append(chunk(b"PLTE", palette[:, :3].tobytes()))
    alpha = trns(palette)
    if alpha:
        parts.append(chunk(b"tRNS", alpha))
    if metadata.dpi:
        per_metre = (int(metadata.dpi[0] / 0.0254 + 0.5), int(metadata.dpi[1] / 0.0254 + 0.5))
        parts.append(chunk(b"pHYs", struct.pack(">IIB", *per_metre, 1)))
    data = compress(scanlines(pack_rows(indices, bits), row_filter), level)
    parts += [chunk(b"IDAT", data[i:i + IDAT_SIZE]) for i in range(0, len(data), IDAT_SIZE)]
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


#: The libdeflate level of every ``--optimize`` level above 0 (its strongest).
OPTIMIZE_DEFLATE = 12


def needs_oxipng(optimize: int) -> bool:
    """Whether an ``--optimize`` level runs oxipng (the ``optimize`` extra)."""
    return optimize >= 2


def oxipng_missing() -> bool:
    """Whether oxipng (``pyoxipng``) cannot be imported."""
    import importlib.util

    return importlib.util.find_spec("oxipng") is None


def optimized(indices: np.ndarray, palette: np.ndarray, *, level: int, optimize: int,
              metadata: Metadata = Metadata(), keep_order: bool = False) -> bytes:
    """The smallest PNG of these indices found at an ``--optimize`` level; every candidate
    decodes to the same pixels.

    0: the default encoder at ``level``. 1: libdeflate's strongest level, with the rows
    both packed (at 16 colors or fewer) and one byte a pixel, the smaller kept. 2: level 1,
    then oxipng's full search (row filters, palette orders and reductions, its own
    deflate), the smaller kept; with ``keep_order`` oxipng may not reorder the palette.
    Each step is deterministic (oxipng's result does not depend on its thread count).
    """
    if not 0 <= optimize <= MAX_OPTIMIZE:
        raise ValueError(f"optimize must be from 0 to {MAX_OPTIMIZE}, got {optimize!r}")
    if optimize == 0:
        return png_bytes(indices, palette, level=level, metadata=metadata)
    best = png_bytes(indices, palette, level=OPTIMIZE_DEFLATE, metadata=metadata)
    if bit_depth(len(palette)) < 8:
        wide = png_bytes(indices, palette, level=OPTIMIZE_DEFLATE, bits=8, metadata=metadata)
        best = wide if len(wide) < len(best) else best
    if needs_oxipng(optimize):
        import oxipng

        found = oxipng.optimize_from_memory(
            best, level=2, fast_evaluation=False, palette_reduction=not keep_order,
            color_type_reduction=not keep_order, grayscale_reduction=not keep_order,
            deflate=oxipng.Deflaters.libdeflater(OPTIMIZE_DEFLATE))
        best = found if len(found) < len(best) else best
    return best
