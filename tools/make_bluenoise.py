"""Make ``colorquant/bluenoise64.npy``: a 64×64 tileable blue-noise threshold mask.

Ulichney's void-and-cluster method (1993): a Gaussian (σ = 1.9 px) energy on the torus
finds the tightest cluster of ones and the largest void of zeros. An initial pattern of 10%
random ones is relaxed by moving the tightest cluster's one into the largest void until that
no longer changes anything; then every pixel gets a rank: the ones are removed tightest
cluster first (ranks counting down), and the zeros are filled largest void first (ranks
counting up). The result holds each rank 0–4095 once (uint16); thresholds at any level are
evenly spread, with no low frequencies, and the mask tiles without seams.

Run: ``python tools/make_bluenoise.py`` (deterministic: seed 0; takes a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 64
SIGMA = 1.9
OUT = Path(__file__).resolve().parent.parent / "colorquant" / "bluenoise64.npy"


def _kernel(size: int, sigma: float) -> np.ndarray:
    """The toroidal Gaussian centred on pixel (0, 0)."""
    d = np.minimum(np.arange(size), size - np.arange(size)).astype(np.float64)
    g = np.exp(-(d**2) / (2 * sigma**2))
    return np.outer(g, g)


def _energy(pattern: np.ndarray, kernel_f: np.ndarray) -> np.ndarray:
    return np.real(np.fft.ifft2(np.fft.fft2(pattern) * kernel_f))


def void_and_cluster(size: int = SIZE, sigma: float = SIGMA, seed: int = 0) -> np.ndarray:
    """Ranks (uint16, shape (size, size)), each 0 to size² - 1 once."""
    kernel = _kernel(size, sigma)
    kernel_f = np.fft.fft2(kernel)
    n = size * size
    rng = np.random.default_rng(seed)
    pattern = np.zeros((size, size), dtype=bool)
    pattern.flat[rng.choice(n, n // 10, replace=False)] = True

    def shifted(index: int) -> np.ndarray:
        return np.roll(kernel, divmod(index, size), axis=(0, 1))

    energy = _energy(pattern.astype(np.float64), kernel_f)
    while True:  # relax the initial pattern
        cluster = int(np.argmax(np.where(pattern, energy, -np.inf)))
        pattern.flat[cluster] = False
        energy -= shifted(cluster)
        void = int(np.argmin(np.where(pattern, np.inf, energy)))
        pattern.flat[void] = True
        energy += shifted(void)
        if void == cluster:
            break
    ranks = np.zeros(n, dtype=np.int64)
    ones = int(pattern.sum())
    work, work_energy = pattern.copy(), energy.copy()
    for rank in range(ones - 1, -1, -1):  # remove ones, tightest cluster first
        cluster = int(np.argmax(np.where(work, work_energy, -np.inf)))
        work.flat[cluster] = False
        work_energy -= shifted(cluster)
        ranks[cluster] = rank
    for rank in range(ones, n):  # fill zeros, largest void first
        void = int(np.argmin(np.where(pattern, np.inf, energy)))
        pattern.flat[void] = True
        energy += shifted(void)
        ranks[void] = rank
    return ranks.reshape(size, size).astype(np.uint16)


if __name__ == "__main__":
    mask = void_and_cluster()
    assert sorted(mask.flat) == list(range(SIZE * SIZE))
    np.save(OUT, mask)
    print(f"wrote {OUT}")
