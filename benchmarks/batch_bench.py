"""Batch benchmark: 100 small images in one colorquant call, against pngquant and 100 calls.

    python benchmarks/batch_bench.py [--files 100] [--colors 16] [--repeats 3]

Generates the images at run time (crops and resizes of ``sample_images/*.jpg``, 0.1–0.3
megapixels, saved as PNG) into a temporary folder, then times, side by side in each repeat:

- ``batch``: ``colorquant FILES -k K --out-dir DIR`` (one process, default ``-j``);
- ``pngquant``: ``pngquant --nofs --force --ext … K FILES`` (one process, if installed);
- ``separate``: one ``colorquant FILE -k K -o OUT`` process per file, in a loop (once: slow).

and prints the medians and the two ratios the batch mode is held to: batch/pngquant (goal
≤ 1.0) and separate/batch (goal ≥ 5). On a shared machine only these ratios mean anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COMMAND = Path(sys.executable).parent / "colorquant"


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` PNGs of 0.1–0.3 MP: random crops of the sample photos, resized."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted((ROOT / "sample_images").glob("*.jpg"))]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        pixels = rng.uniform(0.1e6, 0.3e6)
        aspect = rng.uniform(0.6, 1.6)
        w = int(min(photo.width, round((pixels * aspect) ** 0.5)))
        h = int(min(photo.height, round(pixels / w)))
        x = int(rng.integers(0, photo.width - w + 1))
        y = int(rng.integers(0, photo.height - h + 1))
        crop = photo.crop((x, y, x + w, y + h))
        if i % 3 == 1:  # some are downscaled views of a larger area
            crop = photo.resize((w, h), Image.Resampling.LANCZOS)
        path = folder / f"img{i:03d}.png"
        crop.save(path, compress_level=1)
        paths.append(path)
    return paths


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args[:4])} …\n"
                         f"{proc.stderr.decode()[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--colors", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=None, help="-j for the batch call")
    parser.add_argument("--skip-separate", action="store_true",
                        help="do not time one process per file")
    args = parser.parse_args()
    k = str(args.colors)
    pngquant = shutil.which("pngquant")
    with tempfile.TemporaryDirectory(prefix="cq-batch-bench-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        files = [str(p) for p in make_images(src, args.files)]
        mp = sum(Image.open(f).width * Image.open(f).height for f in files) / 1e6
        print(f"{len(files)} images, {mp:.1f} MP in all, k={k}, CPUs={os.cpu_count()}, "
              f"colorquant={COMMAND}, pngquant={pngquant or 'not installed'}")
        jobs = ["-j", str(args.jobs)] if args.jobs else []
        batch_times, pq_times = [], []
        for r in range(args.repeats):
            out = work / f"batch{r}"
            batch_times.append(timed([str(COMMAND), *files, "-k", k, "--out-dir", str(out),
                                      "-q", *jobs]))
            if pngquant:
                pq_times.append(timed([pngquant, "--nofs", "--force", "--ext", f"-pq{r}.png",
                                       k, "--", *files]))
            print(f"repeat {r + 1}: batch {batch_times[-1]:.2f}s"
                  + (f", pngquant {pq_times[-1]:.2f}s" if pq_times else ""), flush=True)
        batch = statistics.median(batch_times)
        print(f"batch (one call{', -j ' + str(args.jobs) if args.jobs else ''}): "
              f"median {batch:.2f}s")
        if pq_times:
            pq = statistics.median(pq_times)
            print(f"pngquant --nofs: median {pq:.2f}s")
            print(f"ratio batch / pngquant = {batch / pq:.2f} (goal <= 1.0)")
        if not args.skip_separate:
            out = work / "separate"
            out.mkdir()
            start = time.perf_counter()
            for f in files:
                timed([str(COMMAND), f, "-k", k, "-q", "-o", str(out / Path(f).name)])
            separate = time.perf_counter() - start
            print(f"separate ({len(files)} calls, once): {separate:.2f}s")
            print(f"ratio separate / batch = {separate / batch:.2f} (goal >= 5)")


if __name__ == "__main__":
    main()
