"""The file layer: ``quantize_file`` reads a file, quantizes it in memory, encodes and writes
the output atomically (read -> quantize -> encode -> write), plus the helpers a batch uses to
read files for a shared palette.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from . import atomic, encode, formats, frames, imagefile, memory, metrics, pixels
from .core import Clock, QuantizeResult, prepare_frame, quantize_frames
from .errors import NotSmallerError, OutputError, PaletteError
from .options import Log, QuantizeOptions, SaveOptions
from .palette import Palette


def frames_to_write(decoded: frames.Frames, fmt: str, *, label: str, shown_dst: str,
                    log: Log | None = None) -> list[Image.Image]:
    """The decoded frames an output of format ``fmt`` will hold (one, unless it holds
    several of that size); GIF alpha is cut at 50%."""
    images = decoded.images
    row = formats.get(fmt)
    if len(images) > 1 and not row.multi_frame:
        if log:
            log(f"warning: {shown_dst}: {fmt} holds one frame; wrote frame 0 of {len(images)} "
                "(use --frame N to choose)")
        images = images[:1]
    elif len({im.size for im in images}) > 1 and row.frames != "pages":
        part = "page" if decoded.pages else "frame"  # frames: a GIF's that grow its canvas
        if log:
            log(f"warning: {label}: {part}s differ in size and {fmt} holds one size; wrote "
                f"{part} 0 (use --frame N to choose, or a TIFF output for all {part}s)")
        images = images[:1]
    if row.alpha == "binary":
        images, partial = frames.threshold_alpha(images)
        if partial and log:
            log(f"warning: {label}: GIF has no partial transparency; alpha cut at 50%")
    return images


def histogram_file(src: str | os.PathLike[str], fmt: str, options: QuantizeOptions,
                   ) -> pixels.Histogram:
    """The merged histogram of the frames ``quantize_file`` would write from ``src`` in
    format ``fmt`` (for a palette shared by many files)."""
    _, images = _read_frames(src, fmt, options, shown_dst="", check_size=False)
    histograms = [prepare_frame(im).histogram for im in images]
    return histograms[0] if len(histograms) == 1 else pixels.merge(histograms)


def _to_srgb(options: QuantizeOptions, fmt: str) -> bool:
    """Whether to convert the pixels to sRGB through their ICC profile: when asked, or when
    the output format cannot embed the profile that describes them."""
    return options.to_srgb or not formats.get(fmt).icc


def _read_frames(src: str | os.PathLike[str] | BinaryIO, fmt: str, options: QuantizeOptions,
                 *, shown_dst: str, check_size: bool = True, log: Log | None = None,
                 fit_ahead: bool = False) -> tuple[frames.Frames, list[Image.Image]]:
    """Decode ``src`` and pick the frames an output of format ``fmt`` will hold, refusing
    (when ``check_size``) an image too large for that format before any work on it;
    ``fit_ahead``: a fit follows, so a large image's decode overlaps the import of the fit's
    library (:func:`memory.import_fit_backend_ahead`)."""
    label = imagefile.display_name(src)
    source = imagefile.open_image(
        src, max_pixels=options.max_pixels, frame=options.frame,
        before_decode=memory.import_fit_backend_ahead if fit_ahead else None)
    try:
        decoded = frames.read(source, frame=options.frame, to_srgb=_to_srgb(options, fmt),
                              max_pixels=options.max_pixels, label=label, log=log)
    except BaseException:
        source.close()
        raise
    if all(image is not source for image in decoded.images):
        source.close()
    # else the source is the frame itself (one frame, upright, already RGB or RGBA): Pillow
    # closed its file when it decoded it, and closing the image would free its pixels
    if check_size:
        formats.check_output_size(fmt, decoded.images[0].size, shown_dst)
    return decoded, frames_to_write(decoded, fmt, label=label, shown_dst=shown_dst, log=log)


def quantize_file(
    src: str | os.PathLike[str] | BinaryIO,
    dst: str | os.PathLike[str] | BinaryIO,
    k: int = 16,
    *,
    seed: int = 0,
    options: QuantizeOptions | None = None,
    save: SaveOptions | None = None,
    fmt: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    compare: str | os.PathLike[str] | None = None,
    log: Log | None = None,
    palette: Palette | None = None,
    replace: bool = True,
) -> QuantizeResult:
    """Read ``src``, quantize it and write ``dst`` atomically (plus optional plots).

    Parameters
    ----------
    src : str, PathLike or binary file object
        The input; ``"-"`` is standard input.
    dst : str, PathLike or writable binary file object
        The output; ``"-"`` is standard output.
    k, seed : int
        Palette size and seed, when ``options`` is not given.
    options : QuantizeOptions, optional
        Every setting of the quantization (wins over ``k`` and ``seed``).
    save : SaveOptions, optional
        How the output file is written (deflate level, ``optimize``, ``strip``,
        ``skip_if_larger``); the defaults when not given.
    fmt : str, optional
        Output format (``"PNG"``, ``"GIF"``, …); default from ``dst``'s extension, else PNG.
    plot, compare : str or PathLike, optional
        Also write the scatter plot and the side-by-side comparison there.
    log : callable, optional
        Receives each warning as one line of text.
    palette : Palette, optional
        Map to this palette, in its order: no fit runs.
    replace : bool
        Whether an existing ``dst`` may be replaced.

    Returns
    -------
    QuantizeResult
        What was written (for an animation, its first frame, with the counts of all frames).

    Notes
    -----
    ``src`` may be ``"-"`` (standard input) or a binary file object; ``dst`` may be ``"-"``
    (standard output) or a writable binary file object, which receive the whole encoded image
    in one write once it is complete. Every frame of an animation or multi-page file is
    quantized with one shared palette and written as an animation when the output format
    holds one. ``options`` wins over ``k`` and ``seed`` when given. ``log`` receives warnings.
    The result describes the first frame written, with the palette counts of all frames.
    With ``palette`` given, no fit runs: pixels are mapped to that palette, kept in its order.
    With ``replace=False`` an existing ``dst`` is left alone (``OutputExistsError``), decided
    when the file is put in place.
    With ``save.skip_if_larger``, :class:`NotSmallerError` is raised, before anything is
    written, when the encoded output is larger than ``src`` (standard input: the bytes read).
    """
    options = options or QuantizeOptions(colors=k, seed=seed)
    save = save or SaveOptions()
    target = _Target.of(src, dst, fmt)
    clock = Clock()
    if palette is None:
        memory.load_fit_backend()  # under ulimit -v: before the pixels take the memory
    input_size = None
    if save.skip_if_larger:
        src, input_size = input_bytes(src)
    decoded, images = _read_frames(src, target.fmt, options, shown_dst=target.shown, log=log,
                                   fit_ahead=palette is None)
    clock.lap("read")
    keep_order = palette is not None  # a given palette's order is the user's
    results, palette, stage_times = _quantize(images, options, palette, target)
    clock.add(stage_times)
    _warn(palette, len(images), save, target, log)
    writer = _encoder(results, palette, decoded, save, target, keep_order=keep_order)
    size = _write(writer, target, input_size=input_size, replace=replace)
    clock.lap("write")
    result = _summary(results, palette, clock.timings, size)
    if plot is not None or compare is not None:
        _side_outputs(images[0], results[0], options, plot=plot, compare=compare)
        clock.lap("plots")
        result.timings["plots"] = clock.timings["plots"]
    return result


class _Target:
    """Where an output goes: a path or a stream, its format, and its names in messages."""

    def __init__(self, dst: str | os.PathLike[str] | BinaryIO, fmt: str, *, to_stream: bool,
                 label: str, shown: str) -> None:
        self.dst = dst
        self.fmt = fmt
        self.to_stream = to_stream
        #: The input's name in messages.
        self.label = label
        #: The output's name in messages.
        self.shown = shown

    @classmethod
    def of(cls, src: str | os.PathLike[str] | BinaryIO, dst: str | os.PathLike[str] | BinaryIO,
           fmt: str | None) -> _Target:
        """The target of ``dst``, refusing an output that is the input file itself."""
        to_stream = not isinstance(dst, (str, os.PathLike)) or imagefile.is_stdio(dst)
        fmt = formats.output_format(imagefile.STDIO if to_stream else dst,  # type: ignore[arg-type]
                                    fmt)
        shown = "<stdout>" if to_stream else os.fspath(dst)  # type: ignore[arg-type]
        if (not to_stream and isinstance(src, (str, os.PathLike)) and not imagefile.is_stdio(src)
                and os.path.exists(dst) and os.path.exists(src)  # type: ignore[arg-type]
                and os.path.samefile(src, dst)):  # type: ignore[arg-type]
            raise OutputError(f"{dst}: output would overwrite the input")
        return cls(dst, fmt, to_stream=to_stream, label=imagefile.display_name(src),
                   shown=shown)


def _quantize(images: list[Image.Image], options: QuantizeOptions, palette: Palette | None,
              target: _Target) -> tuple[list[QuantizeResult], Palette, dict[str, float]]:
    """The quantize step: every frame with one palette."""
    try:
        return quantize_frames(images, options, palette=palette)
    except PaletteError as exc:
        raise PaletteError(f"{target.label}: {exc}") from None


def _warn(palette: Palette, n_frames: int, save: SaveOptions, target: _Target,
          log: Log | None) -> None:
    """The warnings of what the output format will lose of the quantized frames, or not do
    of what ``save`` asks."""
    if log is None:
        return
    row = formats.get(target.fmt)
    if row.alpha == "none" and palette.has_alpha:
        log(f"warning: {target.shown}: {target.fmt} keeps no transparency; shown over white")
    if save.optimize and not row.optimized and (target.fmt != "PNG" or n_frames > 1):
        what = "an animated PNG" if target.fmt == "PNG" else target.fmt
        log(f"warning: {target.shown}: --optimize applies to single-frame PNG and WebP only; "
            f"{what} written as without it")
    if row.lossy:
        log(f"warning: {target.shown}: {target.fmt} cannot store a palette; its compression "
            "adds colors back")


def _encoder(results: list[QuantizeResult], palette: Palette, decoded: frames.Frames,
             save: SaveOptions, target: _Target, *, keep_order: bool = False,
             ) -> Callable[[BinaryIO], None]:
    """The encode step: a function that encodes the quantized frames into a binary handle
    (``keep_order``: the palette's order is the user's, not to be changed by ``--optimize``).
    """
    transparent = None
    if palette.has_alpha and (palette.colors[:, 3] == 0).any():
        transparent = int(np.flatnonzero(palette.colors[:, 3] == 0)[0])

    def encoded(handle: BinaryIO) -> None:
        try:
            encode.write(handle, [r.image for r in results], target.fmt, decoded,
                         transparent_index=transparent, save=save, n_colors=len(palette),
                         keep_order=keep_order)
        except (ValueError, OverflowError, struct.error) as exc:  # encoder limits
            raise OutputError(f"{target.shown}: the {target.fmt} encoder refused the image "
                              f"({str(exc).strip() or type(exc).__name__})") from None

    return encoded


def _write(encoded: Callable[[BinaryIO], None], target: _Target, *, input_size: int | None,
           replace: bool) -> int:
    """The write step: the encoded image to a stream in one write, or to a file atomically
    (encoded in memory first when its size decides whether it is written); returns the
    bytes written."""
    written = [0]

    def counted(handle: BinaryIO) -> None:
        start = handle.tell()
        encoded(handle)
        handle.seek(0, os.SEEK_END)  # TIFF's writer seeks back to patch its color maps
        written[0] = handle.tell() - start

    buffer = None
    if target.to_stream or input_size is not None:
        buffer = BytesIO()
        counted(buffer)
        if input_size is not None and buffer.tell() > input_size:
            # Decided before anything is written: no file, no temporary file.
            raise NotSmallerError(f"{target.label}: the output would be larger than the input "
                                  f"({buffer.tell()} > {input_size} bytes, --skip-if-larger)")
    if target.to_stream:
        assert buffer is not None
        stream = sys.stdout.buffer if imagefile.is_stdio(target.dst) else target.dst
        try:
            stream.write(buffer.getvalue())  # type: ignore[union-attr]
            stream.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"{target.shown}: cannot write: {exc.strerror or exc}") from None
        return written[0]
    kept = buffer
    atomic.atomic_write(target.dst,  # type: ignore[arg-type]
                        counted if kept is None else lambda handle: handle.write(kept.getvalue()),
                        replace=replace)
    return written[0]


def _summary(results: list[QuantizeResult], palette: Palette, timings: dict[str, float],
             size: int | None = None) -> QuantizeResult:
    """The result of the file: its first frame, with the palette counts of all frames and
    the error averaged over them, weighted by their pixels, and the bytes written."""
    first = results[0]
    if len(results) == 1:
        return QuantizeResult(first.image, palette, first.mse, first.psnr, dict(timings),
                              lambda: first.delta_e, size)
    weights = np.array([r.palette.total for r in results], dtype=np.float64)
    mse = float(np.average([r.mse for r in results], weights=weights))
    return QuantizeResult(first.image, palette, mse, metrics.psnr(mse), dict(timings),
                          lambda: np.average([r.delta_e for r in results], weights=weights),
                          size)


def _side_outputs(original: Image.Image, first: QuantizeResult, options: QuantizeOptions, *,
                  plot: str | os.PathLike[str] | None,
                  compare: str | os.PathLike[str] | None) -> None:
    """The scatter plot and the comparison image of the first frame, when asked for."""
    from . import plots

    if plot is not None:
        plots.save(plots.scatter_figure(original, first, seed=options.seed), plot)
    if compare is not None:
        plots.save(plots.comparison_figure(original, first), compare)


def input_bytes(src: str | os.PathLike[str] | BinaryIO,
                ) -> tuple[str | os.PathLike[str] | BinaryIO, int]:
    """The input to read and its size in bytes: a file's size, or the bytes of standard input
    (or an unseekable stream), read whole into memory once."""
    if isinstance(src, (str, os.PathLike)) and not imagefile.is_stdio(src):
        try:
            return src, os.path.getsize(src)
        except OSError:
            return src, -1  # missing or unreadable: reading it reports why
    stream = sys.stdin.buffer if imagefile.is_stdio(src) else src
    if not imagefile.is_stdio(src) and stream.seekable():  # type: ignore[union-attr]
        here = stream.tell()  # type: ignore[union-attr]
        size = stream.seek(0, os.SEEK_END) - here  # type: ignore[union-attr]
        stream.seek(here)  # type: ignore[union-attr]
        return stream, size
    data = imagefile.read_stream(stream).getvalue()  # type: ignore[arg-type]
    return named_bytes(data, imagefile.display_name(src)), len(data)


def named_bytes(data: bytes, name: str) -> BytesIO:
    """An in-memory input that messages call ``name``."""
    buffer = BytesIO(data)
    buffer.name = name  # type: ignore[attr-defined]
    return buffer


def plot_path_check(path: str | os.PathLike[str]) -> None:
    """Refuse plot paths whose extension matplotlib cannot write."""
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise OutputError(f"{path}: plot must be .png, .svg, .pdf or .jpg")
