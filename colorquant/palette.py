"""The palette: a frozen value of colors and their pixel counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Colors a palette's repr names before it says how many more there are.
REPR_COLORS = 4
#: Side in pixels of one color's square in a palette's picture, and squares to a row.
SWATCH, SWATCHES_PER_ROW = 24, 16


def _frozen(array: np.ndarray, dtype: type, ndim: int, name: str) -> np.ndarray:
    """A read-only copy of ``array`` with the given dtype and number of dimensions."""
    out = np.array(array, dtype=dtype, copy=True)
    if out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {out.shape}")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Palette:
    """An ordered set of colors with the number of pixels each one stands for.

    Parameters
    ----------
    colors : ndarray of uint8, shape (k, 3) or (k, 4)
        sRGB(A) colors; the index of a color is its index in the output image.
    counts : ndarray of int64, shape (k,)
        Pixels mapped to each color (zeros for a palette not yet applied).
    """

    colors: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        colors = _frozen(self.colors, np.uint8, 2, "colors")
        if colors.shape[1] not in (3, 4):
            raise ValueError(f"colors must have 3 or 4 channels, got shape {colors.shape}")
        if not 1 <= len(colors) <= 256:
            raise ValueError(f"a palette holds 1 to 256 colors, got {len(colors)}")
        counts = _frozen(self.counts, np.int64, 1, "counts")
        if counts.shape != (len(colors),):
            raise ValueError(f"counts must have shape ({len(colors)},), got {counts.shape}")
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "counts", counts)

    def __len__(self) -> int:
        return len(self.colors)

    def __repr__(self) -> str:
        """One line: the size, and the first colors with their shares (never the arrays)."""
        shown = [f"{code} {share:.1%}" if self.total else code
                 for code, share in zip(self.hex()[:REPR_COLORS], self.shares(), strict=False)]
        more = len(self) - len(shown)
        tail = f", … {more} more" if more > 0 else ""
        kind = "RGBA" if self.has_alpha else "RGB"
        return f"Palette({len(self)} {kind} colors: {', '.join(shown)}{tail})"

    def _repr_png_(self) -> bytes:
        """The palette as swatches, PNG bytes (Jupyter shows them as a picture).

        Each color is a ``SWATCH``-pixel square, in palette order, ``SWATCHES_PER_ROW`` to a
        row; colors with alpha keep it.
        """
        from io import BytesIO

        from PIL import Image

        per_row = min(len(self), SWATCHES_PER_ROW)
        rows = -(-len(self) // per_row)
        grid = np.zeros((rows * per_row, self.colors.shape[1]), dtype=np.uint8)
        grid[: len(self)] = self.colors
        if not self.has_alpha and len(self) < len(grid):
            grid = np.concatenate([grid, np.full((len(grid), 1), 255, np.uint8)], axis=1)
            grid[len(self):, 3] = 0  # the unfilled end of the last row stays transparent
        cells = grid.reshape(rows, per_row, -1)
        pixels = cells.repeat(SWATCH, axis=0).repeat(SWATCH, axis=1)
        buffer = BytesIO()
        Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB").save(buffer, "PNG")
        return buffer.getvalue()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Palette):
            return NotImplemented
        return np.array_equal(self.colors, other.colors) and np.array_equal(
            self.counts, other.counts
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def has_alpha(self) -> bool:
        """Whether the colors carry an alpha channel."""
        return self.colors.shape[1] == 4

    @property
    def total(self) -> int:
        """Pixels counted over the whole palette."""
        return int(self.counts.sum())

    def hex(self) -> list[str]:
        """Colors as ``#rrggbb`` (or ``#rrggbbaa``) strings, in palette order."""
        return ["#" + bytes(c).hex() for c in self.colors]

    def shares(self) -> np.ndarray:
        """Fraction of pixels per color (float64, sums to 1 when counts are known)."""
        total = self.total
        return self.counts / total if total else np.zeros(len(self), dtype=np.float64)

    def frequency_order(self) -> np.ndarray:
        """Permutation that sorts by descending count, ties by color value (deterministic)."""
        channels = [self.colors[:, c] for c in range(self.colors.shape[1] - 1, -1, -1)]
        return np.lexsort([*channels, -self.counts])

    def storage_order(self) -> np.ndarray:
        """Permutation of the order a fitted palette is stored in: entries that are not opaque
        first, then by descending count, ties by color value (deterministic).

        In a PNG only the entries up to the last one that is not opaque need a tRNS value,
        so this order keeps that chunk shortest; the order changes no pixel, only the index
        each color has.
        """
        channels = [self.colors[:, c] for c in range(self.colors.shape[1] - 1, -1, -1)]
        opaque = (self.colors[:, 3] == 255) if self.has_alpha else np.ones(len(self), bool)
        return np.lexsort([*channels, -self.counts, opaque])

    def take(self, order: np.ndarray) -> Palette:
        """The palette with its entries picked (and reordered) by ``order``."""
        return Palette(self.colors[order], self.counts[order])
