"""Dask benchmark: the batch on ``--dask`` against the same batch on local worker processes.

    python benchmarks/dask_bench.py [--files 500] [--shared-files 5000] [--repeats 3]

Generates the images at run time (crops of ``sample_images/*.jpg``, saved as PNG) into a
temporary folder, then times, interleaved round after round:

1. ``batch``: FILES (0.02–0.08 MP each) with ``-k 16``: ``-j 2`` against ``--dask local -j 2``
   (a new LocalCluster of two single-threaded worker processes, its start-up included).
   Goal: dask ÷ local ≤ 1.2.
2. ``shared``: SHARED-FILES tiny files (48×48 to 96×96) with ``--shared-palette -k 32``:
   ``-j 2`` against ``--dask tcp://…`` on a running cluster of two single-threaded worker
   processes (started here, outside the timed command, so the command's own peak RSS is
   the client's alone).

Prints the medians, the ratios, and each command's own peak RSS (``ru_maxrss`` of the
command process; local worker processes and Dask workers not included). Outputs are
checked byte-identical between the two. On a shared machine only the ratios mean much.
"""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
#: Runs the command in this process and reports its own peak RSS on the last stderr line.
RUNNER = ("import resource, sys\n"
          "from colorquant.cli import run\n"
          "code = run(sys.argv[1:])\n"
          "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
          "sys.exit(code)\n")


def make_images(folder: Path, count: int, low: int, high: int, seed: int = 0) -> list[Path]:
    """``count`` PNGs of ``low``–``high`` pixels: random crops of the sample photos."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted((ROOT / "sample_images").glob("*.jpg"))]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        pixels = rng.uniform(low, high)
        w = int(min(photo.width, round((pixels * rng.uniform(0.7, 1.4)) ** 0.5)))
        h = int(min(photo.height, round(pixels / w)))
        x = int(rng.integers(0, photo.width - w + 1))
        y = int(rng.integers(0, photo.height - h + 1))
        path = folder / f"img{i:05d}.png"
        photo.crop((x, y, x + w, y + h)).save(path, compress_level=1)
        paths.append(path)
    return paths


def timed(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and the command's own peak RSS in MB (printed as they are measured)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True,
                          cwd=cwd, check=False)
    elapsed = time.perf_counter() - start
    lines = proc.stderr.decode().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("maxrss"):
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args[:4])} …\n"
                         f"{proc.stderr.decode()[-2000:]}")
    rss = int(lines[-1].split()[1]) / 1024
    print(f"  {elapsed:8.2f} s {rss:6.0f} MB  {' '.join(args)}", flush=True)
    return elapsed, rss


def same_tree(a: Path, b: Path) -> bool:
    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--shared-files", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="cq-dask-bench-") as tmp:
        work = Path(tmp)
        make_images(work / "photos", args.files, 20_000, 80_000)
        make_images(work / "tiny", args.shared_files, 48 * 48, 96 * 96, seed=1)
        batch = {"local -j 2": ["-j", "2"], "--dask local -j 2": ["--dask", "local", "-j", "2"]}
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
                Client(cluster):
            shared = {"local -j 2": ["-j", "2"], "--dask tcp:// (2 workers)":
                      ["--dask", cluster.scheduler_address]}
            times: dict[str, list[tuple[float, float]]] = {}
            for round_ in range(args.repeats):
                for label, extra in batch.items():
                    out = work / f"out-{label.split()[0]}"
                    times.setdefault(f"batch {label}", []).append(timed(
                        ["-r", "photos", "-k", "16", "--out-dir", str(out), "-q", *extra], work))
                for label, extra in shared.items():
                    out = work / f"shared-{label.split()[0]}"
                    times.setdefault(f"shared {label}", []).append(timed(
                        ["-r", "tiny", "-k", "32", "--shared-palette", "--out-dir", str(out),
                         "-q", *extra], work))
                print(f"round {round_ + 1} done", flush=True)
        identical = (same_tree(work / "out-local", work / "out---dask")
                     and same_tree(work / "shared-local", work / "shared---dask"))
    medians = {k: (statistics.median(t for t, _ in v), max(m for _, m in v))
               for k, v in times.items()}
    print(f"\n{args.repeats} interleaved rounds, medians; outputs byte-identical: {identical}\n")
    print("| run | files | median s | × local | command peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for kind, files in (("batch", args.files), ("shared", args.shared_files)):
        base = medians[next(k for k in medians if k.startswith(f"{kind} local"))][0]
        for key, (median, rss) in medians.items():
            if key.startswith(kind):
                print(f"| {key} | {files} | {median:.2f} | {median / base:.2f} | {rss:.0f} |")
    local_label, dask_label = batch
    dask_batch = medians[f"batch {dask_label}"][0]
    local_batch = medians[f"batch {local_label}"][0]
    print(f"\nper-file overhead of the cluster run (start-up included): "
          f"{(dask_batch - local_batch) / args.files * 1000:.1f} ms")


if __name__ == "__main__":
    main()
