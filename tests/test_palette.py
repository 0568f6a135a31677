import numpy as np
import pytest

from colorquant.palette import Palette


def test_palette_is_frozen_and_copied():
    colors = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    p = Palette(colors, [5, 7])
    colors[0, 0] = 99
    assert p.colors[0, 0] == 1
    with pytest.raises(ValueError):
        p.colors[0, 0] = 7
    with pytest.raises(AttributeError):
        p.colors = colors  # type: ignore[misc]


def test_hex_and_shares():
    p = Palette([[255, 0, 16], [0, 0, 0]], [3, 1])
    assert p.hex() == ["#ff0010", "#000000"]
    assert p.shares().tolist() == [0.75, 0.25]
    assert p.total == 4
    assert Palette([[1, 2, 3, 4]], [1]).hex() == ["#01020304"]


def test_frequency_order_breaks_ties_by_color():
    p = Palette([[9, 9, 9], [1, 1, 1], [5, 5, 5]], [2, 2, 8])
    q = p.take(p.frequency_order())
    assert q.counts.tolist() == [8, 2, 2]
    assert q.colors[:, 0].tolist() == [5, 1, 9]


@pytest.mark.parametrize(
    ("colors", "counts"),
    [
        ([[1, 2]], [1]),
        ([[1, 2, 3]], [1, 2]),
        (np.zeros((0, 3)), []),
        (np.zeros((257, 3)), [0] * 257),
    ],
)
def test_invalid_palettes_are_refused(colors, counts):
    with pytest.raises(ValueError):
        Palette(colors, counts)


def test_equality_is_by_value():
    assert Palette([[1, 2, 3]], [4]) == Palette(np.array([[1, 2, 3]]), np.array([4]))
    assert Palette([[1, 2, 3]], [4]) != Palette([[1, 2, 3]], [5])
