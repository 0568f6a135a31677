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


def scatter_figure(original: Image.Image, result: QuantizeResult, *, seed: int = 0) -> Figure:
    """Two rows of Red–Green and Red–Blue scatter panels: input colors, then reduced colors."""
    before, after = sample_pixels(original, result, seed=seed)
    fig = Figure(figsize=(12, 10), layout="constrained")
    rows = fig.subfigures(2, 1)
    titles = (
        "Input color space: 16 million possible colors",
        f"Reduced color space: {result.n_colors} colors",
    )
    for row, title, shown in zip(rows, titles, (before, after), strict=True):
        r, g, b = (before[:, c] / 255.0 for c in range(3))
        face = shown / 255.0
        left, right = row.subplots(1, 2)
        left.scatter(r, g, c=face, marker=".", s=4, linewidths=0)
        left.set(xlabel="Red", ylabel="Green", xlim=(0, 1), ylim=(0, 1))
        right.scatter(r, b, c=face, marker=".", s=4, linewidths=0)
        right.set(xlabel="Red", ylabel="Blue", xlim=(0, 1), ylim=(0, 1))
        row.suptitle(title, fontsize=16)
    return fig


def comparison_figure(original: Image.Image, result: QuantizeResult) -> Figure:
    """The original and the quantized image side by side."""
    left_image = original.convert("RGBA" if original.mode == "RGBA" else "RGB")
    right_image = result.image.convert(left_image.mode)
    for im in (left_image, right_image):
        im.thumbnail((PREVIEW, PREVIEW), Image.Resampling.NEAREST)
    aspect = left_image.height / left_image.width
    fig = Figure(figsize=(14, 7 * aspect + 1), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, im, title in zip(
        axes, (left_image, right_image), ("Original Image", f"{result.n_colors}-color Image"),
        strict=True,
    ):
        ax.imshow(np.asarray(im))
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
