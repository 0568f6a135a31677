"""The stages composed: a pure in-memory ``quantize`` and the file-level ``quantize_file``."""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from . import dither, fit, frames, io, memory, metrics, palettecontrol, pixels
from .colorspace import get_space
from .errors import NotSmallerError, OutputError, PaletteError, QualityTooLowError
from .options import QuantizeOptions
from .palette import Palette

Log = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class QuantizeResult:
    """What a run produced.

    Attributes
    ----------
    image : PIL.Image.Image
        The quantized image, mode ``"P"`` with the palette attached.
    palette : Palette
        Colors used, most frequent first, with their pixel counts.
    mse, psnr : float
        Error against the input (0–255 scale, per channel) and its PSNR in dB.
    timings : dict of str to float
        Seconds spent in each stage.
    delta_e : float
        Mean CIEDE2000 difference against the input, per pixel; computed when first read
        (about 1 µs per distinct color, more than the whole mapping costs), so runs that do
        not report it do not pay for it.
    """

    image: Image.Image
    palette: Palette
    mse: float
    psnr: float
    timings: dict[str, float] = field(default_factory=dict)
    measure_delta_e: Callable[[], float] = field(default=lambda: float("nan"), repr=False)

    @cached_property
    def delta_e(self) -> float:
        """Mean CIEDE2000 against the input (see the class docstring)."""
        return float(self.measure_delta_e())

    @property
    def n_colors(self) -> int:
        """Number of colors in the output."""
        return len(self.palette)


class _Clock:
    """Records the seconds spent in consecutive stages."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._last
        self._last = now

    def add(self, timings: dict[str, float]) -> None:
        """Record stages timed elsewhere, which ran up to now."""
        for stage, seconds in timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self._last = time.perf_counter()


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image from a PIL image or an (H, W, 3|4) uint8 array, refusing empty ones."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"the image has no pixels ({image.width}x{image.height})")
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(
            f"expected an (H, W, 3) or (H, W, 4) uint8 array, got {array.dtype} {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the array has no pixels (shape {array.shape})")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[2] == 3 else "RGBA")


@dataclass(frozen=True, eq=False)
class Prepared:
    """An image ready for the palette stages: its RGB(A) form and its histogram.

    The packed pixel keys are not kept: they are made again band by band when the pixels are
    mapped, so a large image is never held twice in memory.
    """

    image: Image.Image
    histogram: pixels.Histogram

    @property
    def n_pixels(self) -> int:
        """Number of pixels of the image."""
        return self.image.size[0] * self.image.size[1]

    def key_strips(self) -> Iterator[np.ndarray]:
        """The image's raw uint32 pixel keys, one bounded band of rows at a time."""
        return pixels.key_strips(self.image)

    @property
    def keys(self) -> np.ndarray:
        """All raw pixel keys at once, uint32 of shape (n,) (a full copy: small images only)."""
        return np.concatenate(list(self.key_strips()))


def prepare(image: Image.Image | np.ndarray) -> Prepared:
    """Upright RGB(A) image and its histogram of distinct colors."""
    return _prepare_frame(io.to_rgb(_as_image(image)))


def fit_palette(histogram: pixels.Histogram, options: QuantizeOptions) -> Palette:
    """Fit exactly ``options.colors`` colors to a histogram (one image, or several merged):
    each used by a pixel, besides pinned ``options.keep`` colors; with ``options.target_psnr``
    the fewest colors up to that many that reach it (:class:`QualityTooLowError` if none).

    A histogram with no more distinct colors than that is its own palette (no k-means, no
    scikit-learn import, unless colors are pinned or a target is given). Counts are the
    pixels each color will receive; the order is by frequency.
    """
    return _fit(histogram, options)[0]


def _fit(histogram: pixels.Histogram, options: QuantizeOptions) -> tuple[Palette, np.ndarray]:
    """The fitted palette and the label of each distinct color in it.

    Fully transparent pixels (key 0 of an RGBA histogram) take no part in the fit: they get
    one palette entry of their own, first, with RGB ``options.transparent_color`` and alpha 0,
    which counts toward ``options.colors`` (as in pngquant); the visible colors share the rest.
    """
    if histogram.channels == 4 and len(histogram) and histogram.keys[0] == 0:
        entry = np.array([[*options.transparent_color, 0]], dtype=np.uint8)
        if len(histogram) == 1:
            return Palette(entry, histogram.counts[:1]), np.zeros(1, dtype=np.uint8)
        visible = pixels.Histogram(histogram.keys[1:], histogram.counts[1:], 4)
        clear = histogram.counts[0]
        palette, labels = _fit_visible(visible, options.colors - 1, options, outside=(
            int(clear), int(clear) * sum(c * c for c in options.transparent_color)))
        full = Palette(np.vstack([entry, palette.colors]),
                       np.concatenate([histogram.counts[:1], palette.counts]))
        return full, np.concatenate([[0], labels.astype(np.int64) + 1]).astype(np.uint8)
    return _fit_visible(histogram, options.colors, options)


def _fit_visible(histogram: pixels.Histogram, k: int, options: QuantizeOptions, *,
                 outside: tuple[int, int] = (0, 0)) -> tuple[Palette, np.ndarray]:
    """Exactly ``k`` colors (or every distinct color, when fewer) fitted to a histogram, most
    frequent first, and each color's label (palette control: :mod:`palettecontrol`).

    ``outside`` is the (pixels, squared error) of the entries not fitted here (the
    transparent one), which a PSNR target counts.
    """
    colors = histogram.colors
    space = get_space(options.space, histogram.channels)
    pins = np.array(options.keep, dtype=np.uint8).reshape(-1, 3)
    if histogram.channels == 4:
        pins = np.hstack([pins, np.full((len(pins), 1), 255, dtype=np.uint8)])
    if len(pins) > k:
        raise PaletteError(f"{len(pins)} colors to keep do not fit in the {k} visible palette "
                           "entries (the transparent entry takes one)")

    def fitter(n: int) -> np.ndarray:
        centers = fit.fit_centers(colors, histogram.counts, n, seed=options.seed,
                                  method=options.fit_method, space=space)
        if centers.shape[1] == 4:  # a visible color must stay visible
            centers = centers.copy()
            centers[:, 3] = np.maximum(centers[:, 3], 1)
        return centers

    limits, values = None, 0  # with a PSNR target: the error limits, the channel values
    if options.target_psnr is not None:
        values = (histogram.n_pixels + outside[0]) * histogram.channels
        limits = (palettecontrol.sse_limit(options.target_psnr[0], values) - outside[1],
                  palettecontrol.sse_limit(options.target_psnr[1], values) - outside[1])
    centers, labels, found = palettecontrol.control(
        palettecontrol.Histogram(colors, histogram.counts), k, fitter=fitter,
        nearest=lambda c, p: _nearest(c, p, options), space=space, pins=pins, limits=limits)
    if found is not None and not found.reached:
        best = metrics.psnr((found.evaluated[0][1] + outside[1]) / values)
        raise QualityTooLowError(f"quality too low: {best:.2f} dB with {k + (outside[0] > 0)} "
                                 f"colors, below the target {options.target_psnr[0]:g} dB")
    counts = np.bincount(labels, weights=histogram.counts, minlength=len(centers))
    kept = np.flatnonzero((counts > 0) | (np.arange(len(centers)) < len(pins)))
    used = Palette(centers, counts.astype(np.int64)).take(kept)
    order = used.frequency_order()
    relabel = np.zeros(len(centers), dtype=np.uint8)
    relabel[kept[order]] = np.arange(len(order), dtype=np.uint8)
    return used.take(order), relabel[labels]


def _labels(colors: np.ndarray, palette: Palette, options: QuantizeOptions) -> np.ndarray:
    """Nearest palette index of each distinct color; alpha 0 maps to the transparent entry.

    With a palette that has a fully transparent entry, fully transparent colors take the first
    such entry and visible colors the nearest visible entry, so no visible pixel disappears.
    """
    if colors.shape[1] != 4 or not palette.has_alpha:
        return _nearest(colors, palette.colors, options)
    clear = np.flatnonzero(palette.colors[:, 3] == 0)
    shown = np.flatnonzero(palette.colors[:, 3] > 0)
    if len(clear) == 0 or len(shown) == 0:
        return _nearest(colors, palette.colors, options)
    labels = shown[_nearest(colors, palette.colors[shown], options)].astype(np.uint8)
    labels[colors[:, 3] == 0] = clear[0]
    return labels


def _nearest(colors: np.ndarray, centers: np.ndarray, options: QuantizeOptions) -> np.ndarray:
    """Index of each color's nearest center; an exact tie goes to the center that sorts
    first by (R, G, B[, A]), so the answer never depends on the palette's order."""
    space = get_space(options.space, colors.shape[1])
    by_value = np.lexsort(centers.T[::-1])
    found = space.nearest(space.metric(colors), space.metric(centers[by_value]))
    return by_value[found].astype(np.uint8)


def apply_palette(prepared: Prepared, palette: Palette, options: QuantizeOptions, *,
                  labels: np.ndarray | None = None) -> QuantizeResult:
    """Map every pixel to its exactly nearest palette color; the palette is kept as given.

    The result's palette has the same colors in the same order, with this image's counts.
    ``labels`` (the nearest palette index of each distinct color) skips that search when the
    caller has it already.
    """
    clock = _Clock()
    hist = prepared.histogram
    colors = hist.colors
    if palette.colors.shape[1] != colors.shape[1]:
        raise ValueError(
            f"palette has {palette.colors.shape[1]} channels, image has {colors.shape[1]}"
        )
    if labels is None:
        labels = _labels(colors, palette, options)
    mapping = dither.map_pixels(prepared, palette, options, labels)
    clock.lap("map")
    # The image shares the index array's memory (no copy of the output).
    out = Image.frombuffer("P", prepared.image.size, mapping.indices, "raw", "P", 0, 1)
    out.putpalette(palette.colors.tobytes(), "RGBA" if palette.has_alpha else "RGB")
    error = metrics.mse(mapping.sse, prepared.n_pixels * colors.shape[1])
    clock.lap("metrics")

    def delta_e() -> float:
        pair_colors, pair_labels, pair_counts = mapping.pairs()
        return metrics.mean_delta_e(pair_colors, palette.colors[pair_labels], pair_counts)

    return QuantizeResult(out, Palette(palette.colors, mapping.entry_counts), error,
                          metrics.psnr(error), clock.timings, delta_e)


def quantize(image: Image.Image | np.ndarray, options: QuantizeOptions, *,
             palette: Palette | None = None) -> QuantizeResult:
    """Reduce an image to ``options.colors`` colors, or its distinct colors when fewer (pure,
    in memory; see :func:`fit_palette`).

    With ``palette`` given, no fit runs: pixels are mapped to that palette as it is.
    Every output pixel is the palette color nearest to its input pixel in the fit space.
    """
    clock = _Clock()
    prepared = prepare(image)
    clock.lap("histogram")
    labels = None
    if palette is None:
        palette, labels = _fit(prepared.histogram, options)
        clock.lap("fit")
    else:
        prepared = match_channels(prepared, palette)
    result = apply_palette(prepared, palette, options, labels=labels)
    result.timings.update({**clock.timings, **result.timings})
    return result


def match_channels(prepared: Prepared, palette: Palette) -> Prepared:
    """The prepared image with the palette's channels: an opaque image meets an RGBA palette
    as RGBA (alpha 255); an image with transparency and an RGB palette raise
    :class:`PaletteError`."""
    channels, wanted = prepared.histogram.channels, palette.colors.shape[1]
    if channels == wanted:
        return prepared
    if channels == 3:
        return _prepare_frame(prepared.image.convert("RGBA"))
    raise PaletteError("the image has transparency but the palette has no alpha channel "
                       "(give one with #rrggbbaa colors)")


def quantize_image(
    image: Image.Image | np.ndarray, k: int = 16, *, seed: int = 0, **options: Any
) -> QuantizeResult:
    """Quantize a PIL image or an (H, W, 3) uint8 array to ``k`` colors (fewer only when the
    image has fewer).

    Other keyword arguments are fields of :class:`~colorquant.options.QuantizeOptions`.
    """
    return quantize(image, QuantizeOptions(colors=k, seed=seed, **options))


def _prepare_frame(image: Image.Image) -> Prepared:
    """Histogram of an RGB or RGBA frame, keeping its mode (no alpha dropped).

    The pixel keys are read band by band (again when mapping), never held whole.
    """
    n = image.size[0] * image.size[1]
    return Prepared(image, pixels.histogram(pixels.key_strips(image), len(image.mode),
                                            n_pixels=n))


def quantize_frames(images: list[Image.Image], options: QuantizeOptions, *,
                    palette: Palette | None = None,
                    ) -> tuple[list[QuantizeResult], Palette, dict[str, float]]:
    """Quantize frames (all RGB or all RGBA) with one palette fitted over all of them, or
    mapped to ``palette`` (kept as given, no fit).

    Returns each frame's result, the palette with the pixel counts of all frames, and
    the seconds spent in each stage.
    """
    clock = _Clock()
    prepared = [_prepare_frame(im) for im in images]
    if palette is not None:
        prepared = [match_channels(p, palette) for p in prepared]
        merged = None
    else:
        merged = prepared[0].histogram if len(prepared) == 1 else pixels.merge(
            [p.histogram for p in prepared])
    clock.lap("histogram")
    if merged is not None:
        palette, merged_labels = _fit(merged, options)
        clock.lap("fit")
    results = []
    timings = dict(clock.timings)
    for item in prepared:
        labels = None
        if merged is not None:
            # Each frame's distinct colors are a subset of the merged ones: reuse their labels.
            labels = merged_labels[np.searchsorted(merged.keys, item.histogram.keys)]
        result = apply_palette(item, palette, options, labels=labels)
        results.append(result)
        for stage, seconds in result.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    total = np.sum([r.palette.counts for r in results], axis=0).astype(np.int64)
    return results, Palette(palette.colors, total), timings


def frames_to_write(decoded: frames.Frames, fmt: str, *, label: str, shown_dst: str,
                    log: Log | None = None) -> list[Image.Image]:
    """The decoded frames an output of format ``fmt`` will hold (one, unless it holds
    several of that size); GIF alpha is cut at 50%."""
    images = decoded.images
    if len(images) > 1 and fmt not in frames.MULTI_FRAME_FORMATS:
        if log:
            log(f"warning: {shown_dst}: {fmt} holds one frame; wrote frame 0 of {len(images)} "
                "(use --frame N to choose)")
        images = images[:1]
    elif len({im.size for im in images}) > 1 and fmt != "TIFF":
        part = "page" if decoded.pages else "frame"  # frames: a GIF's that grow its canvas
        if log:
            log(f"warning: {label}: {part}s differ in size and {fmt} holds one size; wrote "
                f"{part} 0 (use --frame N to choose, or a TIFF output for all {part}s)")
        images = images[:1]
    if fmt == "GIF":
        images, partial = frames.threshold_alpha(images)
        if partial and log:
            log(f"warning: {label}: GIF has no partial transparency; alpha cut at 50%")
    return images


def histogram_file(src: str | os.PathLike[str], fmt: str, options: QuantizeOptions,
                   ) -> pixels.Histogram:
    """The merged histogram of the frames ``quantize_file`` would write from ``src`` in
    format ``fmt`` (for a palette shared by many files)."""
    _, images = _read_frames(src, fmt, options, shown_dst="", check_size=False)
    histograms = [_prepare_frame(im).histogram for im in images]
    return histograms[0] if len(histograms) == 1 else pixels.merge(histograms)


def _to_srgb(options: QuantizeOptions, fmt: str) -> bool:
    """Whether to convert the pixels to sRGB through their ICC profile: when asked, or when
    the output format cannot embed the profile that describes them."""
    return options.to_srgb or fmt not in frames.PROFILE_FORMATS


def _read_frames(src: str | os.PathLike[str] | BinaryIO, fmt: str, options: QuantizeOptions,
                 *, shown_dst: str, check_size: bool = True, log: Log | None = None,
                 ) -> tuple[frames.Frames, list[Image.Image]]:
    """Decode ``src`` and pick the frames an output of format ``fmt`` will hold, refusing
    (when ``check_size``) an image too large for that format before any work on it."""
    label = io.display_name(src)
    source = io.open_image(src, max_pixels=options.max_pixels, frame=options.frame)
    try:
        decoded = frames.read(source, frame=options.frame, to_srgb=_to_srgb(options, fmt),
                              max_pixels=options.max_pixels, label=label, log=log)
    finally:
        source.close()
    if check_size:
        io.check_output_size(fmt, decoded.images[0].size, shown_dst)
    return decoded, frames_to_write(decoded, fmt, label=label, shown_dst=shown_dst, log=log)


def quantize_file(
    src: str | os.PathLike[str] | BinaryIO,
    dst: str | os.PathLike[str] | BinaryIO,
    k: int = 16,
    *,
    seed: int = 0,
    options: QuantizeOptions | None = None,
    fmt: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    compare: str | os.PathLike[str] | None = None,
    log: Log | None = None,
    palette: Palette | None = None,
    replace: bool = True,
) -> QuantizeResult:
    """Read ``src``, quantize it and write ``dst`` atomically (plus optional plots).

    ``src`` may be ``"-"`` (standard input) or a binary file object; ``dst`` may be ``"-"``
    (standard output) or a writable binary file object, which receive the whole encoded image
    in one write once it is complete. Every frame of an animation or multi-page file is
    quantized with one shared palette and written as an animation when the output format
    holds one. ``options`` wins over ``k`` and ``seed`` when given. ``log`` receives warnings.
    The result describes the first frame written, with the palette counts of all frames.
    With ``palette`` given, no fit runs: pixels are mapped to that palette, kept in its order.
    With ``replace=False`` an existing ``dst`` is left alone (``OutputExistsError``), decided
    when the file is put in place.
    With ``options.skip_if_larger``, :class:`NotSmallerError` is raised, before anything is
    written, when the encoded output is larger than ``src`` (standard input: the bytes read).
    """
    options = options or QuantizeOptions(colors=k, seed=seed)
    to_stream = not isinstance(dst, (str, os.PathLike)) or io.is_stdio(dst)
    fmt = io.output_format(io.STDIO if to_stream else dst, fmt)  # type: ignore[arg-type]
    label = io.display_name(src)
    shown_dst = "<stdout>" if to_stream else os.fspath(dst)  # type: ignore[arg-type]
    if (not to_stream and isinstance(src, (str, os.PathLike)) and not io.is_stdio(src)
            and os.path.exists(dst) and os.path.exists(src)  # type: ignore[arg-type]
            and os.path.samefile(src, dst)):  # type: ignore[arg-type]
        raise OutputError(f"{dst}: output would overwrite the input")
    clock = _Clock()
    if palette is None:
        memory.load_fit_backend()  # under ulimit -v: before the pixels take the memory
    input_size = None
    if options.skip_if_larger:
        src, input_size = input_bytes(src)
    decoded, images = _read_frames(src, fmt, options, shown_dst=shown_dst, log=log)
    clock.lap("read")
    try:
        results, palette, stage_times = quantize_frames(images, options, palette=palette)
    except PaletteError as exc:
        raise PaletteError(f"{label}: {exc}") from None
    clock.add(stage_times)
    if fmt in ("BMP", "JPEG") and palette.has_alpha and log:
        log(f"warning: {shown_dst}: {fmt} keeps no transparency; shown over white")
    if fmt in io.LOSSY_FORMATS and log:
        log(f"warning: {shown_dst}: {fmt} cannot store a palette; its compression adds colors "
            "back")
    transparent = None
    if palette.has_alpha and (palette.colors[:, 3] == 0).any():
        transparent = int(np.flatnonzero(palette.colors[:, 3] == 0)[0])

    def write(handle: BinaryIO) -> None:
        try:
            frames.write(handle, [r.image for r in results], fmt, decoded,
                         transparent_index=transparent, compress_level=options.compress_level,
                         strip=options.strip, n_colors=len(palette))
        except (ValueError, OverflowError, struct.error) as exc:  # encoder limits
            raise OutputError(f"{shown_dst}: the {fmt} encoder refused the image "
                              f"({str(exc).strip() or type(exc).__name__})") from None

    buffer = None
    if to_stream or input_size is not None:
        buffer = BytesIO()
        write(buffer)
        if input_size is not None and buffer.tell() > input_size:
            # Decided before anything is written: no file, no temporary file.
            raise NotSmallerError(f"{label}: the output would be larger than the input "
                                  f"({buffer.tell()} > {input_size} bytes, --skip-if-larger)")
    if to_stream:
        stream = sys.stdout.buffer if io.is_stdio(dst) else dst
        try:
            stream.write(buffer.getvalue())  # type: ignore[union-attr]
            stream.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"{shown_dst}: cannot write: {exc.strerror or exc}") from None
    else:
        encoded = buffer
        io.atomic_write(dst, write if encoded is None  # type: ignore[arg-type]
                        else lambda handle: handle.write(encoded.getvalue()),
                        replace=replace)
    clock.lap("write")
    first = results[0]
    result = QuantizeResult(first.image, palette, first.mse, first.psnr, dict(clock.timings),
                            lambda: first.delta_e)
    if len(results) > 1:
        weights = np.array([r.palette.total for r in results], dtype=np.float64)
        mse = float(np.average([r.mse for r in results], weights=weights))
        result = QuantizeResult(first.image, palette, mse, metrics.psnr(mse), result.timings,
                                lambda: np.average([r.delta_e for r in results],
                                                   weights=weights))
    if plot is not None or compare is not None:
        from . import plots

        original = images[0]
        if plot is not None:
            plots.save(plots.scatter_figure(original, first, seed=options.seed), plot)
        if compare is not None:
            plots.save(plots.comparison_figure(original, first), compare)
        clock.lap("plots")
        result.timings["plots"] = clock.timings["plots"]
    return result


def input_bytes(src: str | os.PathLike[str] | BinaryIO,
                ) -> tuple[str | os.PathLike[str] | BinaryIO, int]:
    """The input to read and its size in bytes: a file's size, or the bytes of standard input
    (or an unseekable stream), read whole into memory once."""
    if isinstance(src, (str, os.PathLike)) and not io.is_stdio(src):
        try:
            return src, os.path.getsize(src)
        except OSError:
            return src, -1  # missing or unreadable: reading it reports why
    stream = sys.stdin.buffer if io.is_stdio(src) else src
    if not io.is_stdio(src) and stream.seekable():  # type: ignore[union-attr]
        here = stream.tell()  # type: ignore[union-attr]
        size = stream.seek(0, os.SEEK_END) - here  # type: ignore[union-attr]
        stream.seek(here)  # type: ignore[union-attr]
        return stream, size
    data = io.read_stream(stream).getvalue()  # type: ignore[arg-type]
    return named_bytes(data, io.display_name(src)), len(data)


def named_bytes(data: bytes, name: str) -> BytesIO:
    """An in-memory input that messages call ``name``."""
    buffer = BytesIO(data)
    buffer.name = name  # type: ignore[attr-defined]
    return buffer


def plot_path_check(path: str | os.PathLike[str]) -> None:
    """Refuse plot paths whose extension matplotlib cannot write."""
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise OutputError(f"{path}: plot must be .png, .svg, .pdf or .jpg")
