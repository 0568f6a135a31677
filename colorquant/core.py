"""The stages composed in memory: an image (or frames) and options in, a quantized image and
its palette out. No files: reading and writing are :mod:`colorquant.files`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from PIL import Image

from . import dither, fit, imagefile, metrics, palettecontrol, pixels
from .colorspace import get_space
from .errors import PaletteError, QualityTooLowError
from .imagedata import Prepared, QuantizeResult
from .options import QuantizeOptions
from .palette import Palette

__all__ = ["Prepared", "QuantizeResult", "apply_palette", "fit_palette", "match_channels",
           "prepare", "quantize", "quantize_frames", "quantize_image"]


class Clock:
    """Records the seconds spent in consecutive stages (the ``timings`` of a result)."""

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


def prepare(image: Image.Image | np.ndarray) -> Prepared:
    """Upright RGB(A) image and its histogram of distinct colors."""
    return prepare_frame(imagefile.to_rgb(_as_image(image)))


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
    """Exactly ``k`` colors (or every distinct color, when fewer) fitted to a histogram, in
    storage order (:meth:`Palette.storage_order`), and each color's label (palette
    control: :mod:`palettecontrol`).

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
        palettecontrol.WeightedColors(colors, histogram.counts), k, fitter=fitter,
        nearest=lambda c, p: _nearest(c, p, options), space=space, pins=pins, limits=limits)
    if found is not None and not found.reached:
        best = metrics.psnr((found.evaluated[0][1] + outside[1]) / values)
        raise QualityTooLowError(f"quality too low: {best:.2f} dB with {k + (outside[0] > 0)} "
                                 f"colors, below the target {options.target_psnr[0]:g} dB")
    counts = np.bincount(labels, weights=histogram.counts, minlength=len(centers))
    kept = np.flatnonzero((counts > 0) | (np.arange(len(centers)) < len(pins)))
    used = Palette(centers, counts.astype(np.int64)).take(kept)
    order = used.storage_order()
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
    points, ordered = space.metric(colors), space.metric(centers[by_value])
    # in a process that loaded the fit's kernel, its compiled search: the same answers
    found = fit.nearest_compiled(points, ordered) if space.integer_metric else None
    if found is None:
        found = space.nearest(points, ordered)
    return by_value[found].astype(np.uint8)


def apply_palette(prepared: Prepared, palette: Palette, options: QuantizeOptions, *,
                  labels: np.ndarray | None = None) -> QuantizeResult:
    """Map every pixel to its exactly nearest palette color; the palette is kept as given.

    The result's palette has the same colors in the same order, with this image's counts.
    ``labels`` (the nearest palette index of each distinct color) skips that search when the
    caller has it already.
    """
    clock = Clock()
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

    Parameters
    ----------
    image : PIL.Image.Image or ndarray of uint8, shape (H, W, 3) or (H, W, 4)
        The pixels; an RGBA image keeps its transparency.
    options : QuantizeOptions
        The fit and mapping settings (the file settings are not used here).
    palette : Palette, optional
        Map to this palette as it is, in its order: no fit runs.

    Returns
    -------
    QuantizeResult
        The image in mode ``"P"``, its palette with pixel counts, and the error. Without
        dithering every output pixel is the palette color nearest to its input pixel in the
        fit space.
    """
    clock = Clock()
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
        return prepare_frame(prepared.image.convert("RGBA"))
    raise PaletteError("the image has transparency but the palette has no alpha channel "
                       "(give one with #rrggbbaa colors)")


def quantize_image(
    image: Image.Image | np.ndarray, k: int = 16, *, seed: int = 0, **options: Any
) -> QuantizeResult:
    """Quantize a PIL image or an (H, W, 3) uint8 array to ``k`` colors (fewer only when the
    image has fewer).

    Parameters
    ----------
    image : PIL.Image.Image or ndarray of uint8, shape (H, W, 3) or (H, W, 4)
        The pixels.
    k : int
        Palette size, 2 to 256.
    seed : int
        Seed of every random choice; the same seed gives the same result.
    **options
        Other fields of :class:`~colorquant.options.QuantizeOptions`, by name.

    Returns
    -------
    QuantizeResult
        As :func:`quantize` returns it.
    """
    return quantize(image, QuantizeOptions(colors=k, seed=seed, **options))


def prepare_frame(image: Image.Image) -> Prepared:
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
    clock = Clock()
    prepared = [prepare_frame(im) for im in images]
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
