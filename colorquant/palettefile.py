"""Read and write palette files: GIMP ``.gpl``, ``.json``, ``.txt``/``.hex`` lists, images.

The format is chosen by the file's extension. Colors and their order round-trip exactly through
every format; pixel counts are stored by ``.json`` only (the others read back as zeros).

| extension | content |
|---|---|
| ``.gpl`` | GIMP palette: ``R G B name`` lines (RGB only) |
| ``.json`` | ``{"colors": ["#rrggbb", ...], "counts": [...]}``, or a bare list of hex strings |
| ``.txt``, ``.hex`` | one color a line, ``#rrggbb`` or ``#rrggbbaa`` (the ``#`` is optional); |
|  | a Paint.NET palette (a ``;`` comment naming Paint.NET) is read as ``AARRGGBB`` |
| image extension | written as a k×1 strip, one pixel per color; read as the image's distinct |
|  | colors in order of first appearance (row by row), at most 256 |
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import formats
from .errors import ColorquantError, ImageTooLargeError, PaletteError
from .palette import Palette

if TYPE_CHECKING:
    from PIL import Image

TEXT_FORMATS = (".gpl", ".json", ".txt", ".hex")
#: Image extensions a palette can be written to without changing its colors (not JPEG).
IMAGE_WRITE_FORMATS = tuple(ext for row in formats.TABLE if not row.lossy
                            for ext in row.extensions)
#: Pixel limit when a palette is read from an image.
MAX_PALETTE_IMAGE_PIXELS = 16_000_000
#: Largest text palette file read: 256 colors take about 10 kB in any format, so anything
#: beyond this is not a palette, and is refused before it is read whole.
MAX_TEXT_BYTES = 1 << 20
#: Longest line of a ``.gpl``/``.txt``/``.hex`` file (GIMP itself reads 1,024 bytes a line).
MAX_LINE_CHARS = 4096

_HEX = re.compile(r"#?([0-9a-fA-F]{6}(?:[0-9a-fA-F]{2})?)")


def _kind(path: str | os.PathLike[str], *, writing: bool) -> str:
    ext = Path(path).suffix.lower()
    if ext in TEXT_FORMATS:
        return ext
    if ext in (IMAGE_WRITE_FORMATS if writing else tuple(formats.BY_EXTENSION)):
        return "image"
    known = ", ".join((*TEXT_FORMATS, *(IMAGE_WRITE_FORMATS if writing else formats.BY_EXTENSION)))
    raise PaletteError(
        f"{os.fspath(path)}: unknown palette extension {ext or '(none)'!r} (use one of {known})"
    )


def check_path(path: str | os.PathLike[str], *, writing: bool) -> None:
    """Raise :class:`PaletteError` when the extension is not a palette format."""
    _kind(path, writing=writing)


def palette_from_hex(colors: list[str], counts: list[int] | None = None) -> Palette:
    """A palette from ``#rrggbb``/``#rrggbbaa`` strings (and pixel counts)."""
    palette = _from_hex(colors, "palette")
    return palette if counts is None else Palette(palette.colors, np.asarray(counts))


def _from_hex(values: list[str], label: str) -> Palette:
    rows = []
    for value in values:
        match = _HEX.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise PaletteError(f"{label}: not a #rrggbb color: {value!r}")
        rows.append(bytes.fromhex(match.group(1)))
    return _palette(rows, label)


def _palette(rows: list[bytes], label: str, counts: list[int] | None = None) -> Palette:
    if not rows:
        raise PaletteError(f"{label}: the palette has no colors")
    if len(rows) > 256:
        raise PaletteError(f"{label}: {len(rows)} colors, a palette holds at most 256")
    if any(len(row) == 4 for row in rows):
        rows = [row if len(row) == 4 else row + b"\xff" for row in rows]
    colors = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)
    if counts is None:
        counts = [0] * len(rows)
    return Palette(colors, np.asarray(counts, dtype=np.int64))


def _read_gpl(text: str, label: str) -> Palette:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "GIMP Palette":
        raise PaletteError(f"{label}: not a GIMP palette (first line must be 'GIMP Palette')")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or re.match(r"(Name|Columns):", stripped):
            continue
        fields = stripped.split(None, 3)
        try:
            rgb = [int(v) for v in fields[:3]]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise PaletteError(f"{label}: line {number}: expected 'R G B [name]', got {line!r}")
        rows.append(bytes(rgb))
    return _palette(rows, label)


def _read_json(text: str, label: str) -> Palette:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PaletteError(f"{label}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise PaletteError(f"{label}: not a palette (JSON nested too deeply)") from None
    except ValueError:  # an integer of more than 4,300 digits
        raise PaletteError(f"{label}: not a palette (a number too long)") from None
    counts = None
    if isinstance(data, dict):
        colors, counts = data.get("colors"), data.get("counts")
    else:
        colors = data
    if not isinstance(colors, list):
        raise PaletteError(f"{label}: expected a list of '#rrggbb' strings under 'colors'")
    if len(colors) > 256:
        raise PaletteError(f"{label}: {len(colors):,} colors, a palette holds at most 256")
    palette = _from_hex(colors, label)
    if counts is not None:
        if (not isinstance(counts, list) or len(counts) != len(colors)
                or not all(type(c) is int and 0 <= c < 2**63 for c in counts)):
            raise PaletteError(f"{label}: 'counts' must be {len(colors)} non-negative integers")
        palette = Palette(palette.colors, np.asarray(counts, dtype=np.int64))
    return palette


def _read_lines(text: str, label: str) -> Palette:
    """One color a line. A Paint.NET palette (its header comment names Paint.NET) stores
    ``AARRGGBB``, so its 8-digit colors are read with alpha first (and as RGB when all are
    opaque, since that format always writes alpha)."""
    rows = []
    text = text.removeprefix("\ufeff")
    alpha_first = "paint.net" in "".join(
        line for line in text.splitlines() if line.lstrip().startswith(";")).lower()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = re.split(r";|//", line, maxsplit=1)[0].strip()  # a comment ends the line
        if not stripped:
            continue
        match = _HEX.fullmatch(stripped)
        if match is None:
            raise PaletteError(f"{label}: line {number}: not a #rrggbb color: {line!r}")
        row = bytes.fromhex(match.group(1))
        rows.append(row[1:] + row[:1] if alpha_first and len(row) == 4 else row)
    if alpha_first and all(len(row) == 3 or row[3] == 255 for row in rows):
        rows = [row[:3] for row in rows]  # Paint.NET always writes alpha: opaque is RGB
    return _palette(rows, label)


def _read_image(path: str | os.PathLike[str], label: str) -> Palette:
    from . import imagefile, pixels

    try:
        image = imagefile.to_rgb(imagefile.open_image(path, max_pixels=MAX_PALETTE_IMAGE_PIXELS))
    except ImageTooLargeError:
        raise PaletteError(f"{label}: over the limit of {MAX_PALETTE_IMAGE_PIXELS:,} pixels "
                           "for a palette image") from None
    except ColorquantError as exc:
        raise PaletteError(str(exc)) from None
    channels = len(image.mode)
    keys, first, counts, clear = _distinct_in_order(image, channels, label)
    if clear is not None:
        # fully transparent pixels are one entry, with the RGB of the first of them (a written
        # palette's transparent entry keeps its --transparent-color)
        keys = np.where(keys == 0, clear, keys)
    order = np.argsort(first, kind="stable")
    return Palette(pixels.unpack(keys[order], channels), counts[order])


def _distinct_in_order(image: Image.Image, channels: int, label: str,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.uint32 | None]:
    """The distinct canonical keys of an image, the index of each one's first pixel and its
    count, and the raw key of the first fully transparent pixel (if any). Read one band of
    rows at a time and stopped as soon as there are more than 256 colors, so a large image
    costs one band of memory beyond its decoded pixels."""
    from . import pixels

    keys = np.zeros(0, np.uint32)
    first = np.zeros(0, np.int64)
    counts = np.zeros(0, np.int64)
    clear = None
    offset = 0
    for raw in pixels.key_strips(image):
        band = pixels.canonical(raw, channels)
        if clear is None and channels == 4:
            hidden = np.flatnonzero(raw >> 24 == 0)
            clear = raw[hidden[0]] if len(hidden) else None
        distinct, where, number = np.unique(band, return_index=True, return_counts=True)
        merged, inverse = np.unique(np.concatenate([keys, distinct]), return_inverse=True)
        if len(merged) > 256:
            raise PaletteError(f"{label}: the image has more than 256 colors, a palette holds "
                               "at most 256 (quantize it first)")
        positions = np.concatenate([first, where + offset])
        first = np.full(len(merged), np.iinfo(np.int64).max)
        np.minimum.at(first, inverse, positions)
        counts = np.bincount(inverse, weights=np.concatenate([counts, number]),
                             minlength=len(merged)).astype(np.int64)
        keys = merged.astype(np.uint32)
        offset += len(raw)
    return keys, first, counts, clear


def read_palette(path: str | os.PathLike[str]) -> Palette:
    """Read a palette file; the format comes from the extension.

    Raises
    ------
    PaletteError
        Unknown extension, unreadable file, bad syntax, no colors or more than 256.
    """
    label = os.fspath(path)
    kind = _kind(path, writing=False)
    if kind == "image":
        return _read_image(path, label)
    text = _read_text(path, label)
    if kind != ".json":
        _check_lines(text, label)
    reader = {".gpl": _read_gpl, ".json": _read_json}.get(kind, _read_lines)
    return reader(text, label)


def _too_big(label: str, size: str) -> PaletteError:
    return PaletteError(f"{label}: {size}, over the limit of {MAX_TEXT_BYTES:,} bytes for a "
                        "palette file (a palette holds at most 256 colors)")


def _read_text(path: str | os.PathLike[str], label: str) -> str:
    """The UTF-8 text of a palette file, refused unread when it is larger than
    :data:`MAX_TEXT_BYTES` (at most that many bytes are read, even from a pipe)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_TEXT_BYTES:
                raise _too_big(label, f"{size:,} bytes")
            data = handle.read(MAX_TEXT_BYTES + 1)
    except FileNotFoundError:
        raise PaletteError(f"{label}: no such file") from None
    except OSError as exc:
        raise PaletteError(f"{label}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TEXT_BYTES:
        raise _too_big(label, f"more than {MAX_TEXT_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PaletteError(f"{label}: cannot read: not UTF-8 text") from None


def _check_lines(text: str, label: str) -> None:
    """Refuse a line longer than :data:`MAX_LINE_CHARS` (no palette line is)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > MAX_LINE_CHARS:
            raise PaletteError(f"{label}: line {number} has {len(line):,} characters, over "
                               f"the limit of {MAX_LINE_CHARS:,}")


def format_palette(palette: Palette, kind: str, name: str = "colorquant") -> str:
    """The text of a palette file of kind ``.gpl``, ``.json``, ``.txt`` or ``.hex``."""
    hexes = palette.hex()
    if kind == ".gpl":
        if palette.has_alpha:
            raise PaletteError("a GIMP palette cannot hold transparency; use .json or .txt")
        lines = ["GIMP Palette", f"Name: {name}", "Columns: 0", "#"]
        lines += [f"{r:3d} {g:3d} {b:3d}\t{hx}" for (r, g, b), hx in zip(
            palette.colors.tolist(), hexes, strict=True)]
        return "\n".join(lines) + "\n"
    if kind == ".json":
        return json.dumps({"colors": hexes, "counts": palette.counts.tolist()}) + "\n"
    return "\n".join(hexes) + "\n"


def write_palette(palette: Palette, path: str | os.PathLike[str]) -> None:
    """Write a palette file atomically; the format comes from the extension.

    Raises
    ------
    PaletteError
        Unknown extension, or transparency in a format that cannot hold it.
    OutputError
        The file cannot be written.
    """
    from . import atomic

    kind = _kind(path, writing=True)
    if kind == "image":
        from PIL import Image

        mode = "RGBA" if palette.has_alpha else "RGB"
        strip = Image.frombytes(mode, (len(palette), 1), palette.colors.tobytes())
        row = formats.BY_EXTENSION[Path(path).suffix.lower()]
        fmt = row.name
        # exact: libwebp would otherwise drop the RGB of a fully transparent entry
        params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
        if row.alpha != "full" and palette.has_alpha:
            raise PaletteError(f"{os.fspath(path)}: {fmt} cannot hold transparency; use .png")
        if fmt == "GIF":
            # GIF stores a palette: keep our order, one entry per color.
            strip = Image.frombytes("P", (len(palette), 1), bytes(range(len(palette))))
            strip.putpalette(palette.colors.tobytes(), "RGB")
        atomic.atomic_write(path, lambda handle: strip.save(handle, format=fmt, **params))
        return
    try:
        data = format_palette(palette, kind, name=Path(path).stem).encode("utf-8")
    except PaletteError as exc:
        raise PaletteError(f"{os.fspath(path)}: {exc}") from None
    atomic.atomic_write(path, lambda handle: handle.write(data))
