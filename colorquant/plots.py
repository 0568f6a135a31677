"""Side outputs: the RGB-space scatter plot and the side-by-side comparison.

Uses matplotlib's object API (``Figure``, never ``pyplot``), so no global state and no GUI
backend; this module is imported only when a plot is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image

from . import atomic

if TYPE_CHECKING:
    from .imagedata import QuantizeResult

#: Pixels drawn in the scatter plot.
SAMPLE = 10_000
#: Longest side of the images drawn in the comparison (larger ones are downscaled for display).
PREVIEW = 1200


def sample_pixels(
    original: Image.Image, result: QuantizeResult, *, seed: int, n: int = SAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of pixels: their original and their new RGB colors, uint8 (n, 3)."""
    total = original.width * original.height
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(n, total), replace=False))
    before = np.asarray(original.convert("RGB")).reshape(-1, 3)[chosen]
    indices = np.asarray(result.image).reshape(-1)[chosen]
    after = result.palette.colors[indices, :3]
    return before, after


def palette_centers(result: QuantizeResult) -> tuple[np.ndarray, np.ndarray]:
    """The visible palette colors that some pixel uses, uint8 (m, 3), and their shares of
    those pixels (float64, sums to 1), largest share first (so small markers draw on top)."""
    colors, counts = result.palette.colors, result.palette.counts
    visible = counts > 0
    if colors.shape[1] == 4:
        visible &= colors[:, 3] > 0
    order = np.argsort(-counts[visible], kind="stable")
    shown = counts[visible][order].astype(np.float64)
    return colors[visible][order, :3], shown / shown.sum() if shown.size else shown


#: Marker areas (points²) of a palette center: the floor keeps rare colors visible, the span
#: makes a color's area proportional to its share above it.
CENTER_MIN, CENTER_SPAN = 30.0, 3000.0


def scatter_figure(original: Image.Image, result: QuantizeResult, *, seed: int = 0) -> Figure:
    """Two rows of Red–Green and Red–Blue scatter panels: the input colors, then the same
    pixels in their palette colors with the palette colors themselves drawn over them as
    outlined circles whose area grows with their share of the pixels."""
    before, after = sample_pixels(original, result, seed=seed)
    centers, shares = palette_centers(result)
    fig = Figure(figsize=(12, 10), layout="constrained")
    rows = fig.subfigures(2, 1)
    titles = (
        "Input color space: 16 million possible colors",
        f"Reduced color space: {result.n_colors} colors",
    )
    r, g, b = (before[:, c] / 255.0 for c in range(3))
    for row, title, shown in zip(rows, titles, (before, after), strict=True):
        face = shown / 255.0
        reduced = shown is after
        panels = row.subplots(1, 2)
        for ax, y, channel, label in zip(panels, (g, b), (1, 2), ("Green", "Blue"),
                                         strict=True):
            ax.scatter(r, y, c=face, marker=".", s=4, linewidths=0,
                       alpha=0.5 if reduced else 1.0)
            if reduced and len(centers):
                ax.scatter(centers[:, 0] / 255.0, centers[:, channel] / 255.0,
                           c=centers / 255.0, s=CENTER_MIN + CENTER_SPAN * shares,
                           marker="o", edgecolors="black", linewidths=1.2, zorder=3,
                           clip_on=False)
            ax.set(xlabel="Red", ylabel=label, xlim=(0, 1), ylim=(0, 1))
        row.suptitle(title, fontsize=16)
    return fig


#: Layout of the comparison, in inches: figure width, outer margin, gap between the images
#: and the band above them for the titles.
COMPARE_WIDTH, COMPARE_MARGIN, COMPARE_GAP, COMPARE_TITLE = 14.0, 0.1, 0.2, 0.5


def comparison_figure(original: Image.Image, result: QuantizeResult) -> Figure:
    """The original and the quantized image side by side.

    The axes are placed by hand, each exactly the shape of its image, and the figure's height
    is computed from them, so the picture has no blank band whatever the image's aspect.
    """
    left_image = original.convert("RGBA" if original.mode == "RGBA" else "RGB")
    right_image = result.image.convert(left_image.mode)
    for im in (left_image, right_image):
        im.thumbnail((PREVIEW, PREVIEW), Image.Resampling.NEAREST)
    width = (COMPARE_WIDTH - 2 * COMPARE_MARGIN - COMPARE_GAP) / 2
    height = width * left_image.height / left_image.width
    total = COMPARE_MARGIN + height + COMPARE_TITLE
    fig = Figure(figsize=(COMPARE_WIDTH, total))
    for i, (im, title) in enumerate(zip((left_image, right_image),
                                        ("Original Image", f"{result.n_colors}-color Image"),
                                        strict=True)):
        left = COMPARE_MARGIN + i * (width + COMPARE_GAP)
        ax = fig.add_axes((left / COMPARE_WIDTH, COMPARE_MARGIN / total,
                           width / COMPARE_WIDTH, height / total))
        ax.imshow(np.asarray(im), aspect="auto")
        ax.set_title(title, fontsize=16)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def save(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write a figure atomically, in the format its extension names."""
    fmt = Path(path).suffix.lower().lstrip(".") or "png"
    fmt = "jpeg" if fmt == "jpg" else fmt
    # Drop timestamps and version strings so the same run writes the same bytes.
    kwargs: dict[str, object] = {
        "png": {"metadata": {"Software": None}},
        "pdf": {"metadata": {"CreationDate": None, "Producer": None, "Creator": None}},
        "svg": {"metadata": {"Date": None, "Creator": None}},
    }.get(fmt, {})

    def write(handle: BinaryIO) -> None:
        # SVG element ids are random (uuid4) unless salted: a fixed salt makes them repeatable.
        with rc_context({"svg.hashsalt": "colorquant"}):
            fig.savefig(handle, format=fmt, dpi=100, **kwargs)

    atomic.atomic_write(path, write)
