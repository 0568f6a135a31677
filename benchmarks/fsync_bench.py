"""The cost of durable writes: fsync of each output and of its folder, on and off.

    python benchmarks/fsync_bench.py [--files 100] [--rounds 5] [--dir DIR]

Two cases, each timed with ``colorquant.atomic.DURABLE`` on and off in interleaved rounds (the
order alternates), medians and their ratio printed:

- ``100 small``: 100 outputs (0.1 MP PNGs, already encoded) written with ``atomic.atomic_write``
  one after another, as a batch writes them; and the whole batch (decode, quantize, encode,
  write: ``files.quantize_file`` per file) to show what share of a batch the flushes are;
- ``24 MP``: ``files.quantize_file`` of one 24 MP JPEG photo (6000x4000, upscaled from
  ``sample_images/china.jpg``), whole run and its write stage.

The outputs go to ``--dir`` (default: a temporary folder under /tmp), which should be on the
disk you care about: fsync costs what the disk and file system make it cost.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from colorquant import QuantizeOptions, atomic, core, files

ROOT = Path(__file__).resolve().parent.parent


def _inputs(folder: Path, files: int) -> list[Path]:
    with Image.open(ROOT / "sample_images" / "china.jpg") as image:
        source = np.asarray(image.convert("RGB"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(files):
        top, left = int(rng.integers(0, source.shape[0] - 300)), int(rng.integers(0, 300))
        path = folder / f"in{i:03d}.png"
        Image.fromarray(source[top:top + 250, left:left + 400]).save(path)
        paths.append(path)
    return paths


def _timed(durable: bool, work) -> float:
    atomic.DURABLE = durable
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        srcs = _inputs(folder, args.files)
        options = QuantizeOptions(colors=16)
        encoded = []
        for src in srcs:
            buffer = BytesIO()
            core.quantize_image(np.asarray(Image.open(src)), 16).image.save(buffer, "PNG")
            encoded.append(buffer.getvalue())
        photo = folder / "photo.jpg"
        with Image.open(ROOT / "sample_images" / "china.jpg") as image:
            image.convert("RGB").resize((6000, 4000), Image.BILINEAR).save(photo, quality=90)
        out = folder / "out"
        out.mkdir()

        def small_writes() -> None:
            for i, data in enumerate(encoded):
                atomic.atomic_write(out / f"o{i:03d}.png", lambda h, d=data: h.write(d))

        def small_batch() -> None:
            for i, src in enumerate(srcs):
                files.quantize_file(src, out / f"b{i:03d}.png", options=options)

        write_stage: dict[bool, list[float]] = {True: [], False: []}

        def big() -> None:
            result = files.quantize_file(photo, out / "photo.png", options=options)
            write_stage[atomic.DURABLE].append(result.timings["write"])

        cases = {"100 small: writes": small_writes, "100 small: whole batch": small_batch,
                 "24 MP: whole run": big}
        times = {name: {True: [], False: []} for name in cases}
        for round_ in range(args.rounds):
            for name, work in cases.items():
                for durable in ((True, False) if round_ % 2 == 0 else (False, True)):
                    times[name][durable].append(_timed(durable, work))
        atomic.DURABLE = True
    times["24 MP: write stage"] = write_stage
    print(f"{'case':<24} {'fsync s':>9} {'no fsync s':>11} {'ratio':>7} {'extra ms':>9}")
    for name, runs in times.items():
        on, off = statistics.median(runs[True]), statistics.median(runs[False])
        print(f"{name:<24} {on:>9.4f} {off:>11.4f} {on / off:>7.2f} {1000 * (on - off):>9.1f}")
    print(f"({args.rounds} interleaved rounds, medians)")


if __name__ == "__main__":
    main()
