"""Shared fixtures: sample images, the corpus, small generated images and the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
CORPUS = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
COMMAND = Path(sys.executable).parent / "colorquant"


@pytest.fixture(scope="session")
def china() -> Path:
    return SAMPLES / "china.jpg"


@pytest.fixture(scope="session")
def flower() -> Path:
    return SAMPLES / "flower.jpg"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus folder {CORPUS} is absent")
    return CORPUS


def random_image(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """A uint8 image of uniformly random colors."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def palette_image(colors: np.ndarray, height: int, width: int, seed: int) -> np.ndarray:
    """An image using exactly the given colors (each at least once), in random places."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(colors), height * width)
    idx[: len(colors)] = np.arange(len(colors))
    rng.shuffle(idx)
    return np.asarray(colors, dtype=np.uint8)[idx].reshape(height, width, -1)


@pytest.fixture
def small_png(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    Image.fromarray(random_image(24, 32, seed=1)).save(path)
    return path


def run(*args: str | os.PathLike[str], stdin: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the installed ``colorquant`` command; returns the finished process."""
    assert COMMAND.exists(), f"the colorquant command is not installed at {COMMAND}"
    return subprocess.run([str(COMMAND), *map(str, args)], input=stdin, capture_output=True,
                          cwd=cwd, timeout=300, check=False)


_PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, timeout=120)\n"
    "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.stderr.buffer.write(p.stderr)\n"
    "sys.exit(p.returncode)\n"
)


def run_peak(*args: str | os.PathLike[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command; returns the finished process (stderr only) and its peak resident memory
    in MB. A fresh wrapper process starts it: a child of this (large) test process would
    inherit its peak."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *map(str, args)],
                          capture_output=True, text=True, timeout=150, check=False)
    return proc, int(proc.stdout or 0) / 1024
