"""Two checkouts side by side, each through its own warm worker: call time and fit stage.

    python benchmarks/worker_ab.py OLD_CHECKOUT NEW_CHECKOUT [--files 12] [--rounds 2]
        [--colors 16 64 256]

Each checkout's package is put first on ``PYTHONPATH`` of this interpreter and served by a
warm worker of its own (a private ``XDG_RUNTIME_DIR``), started and warmed before the timing.
The photos are ``perfile_bench.make_photos``' 0.4 MP PNGs. Calls alternate between the two,
the order reversed every round; for each palette size it prints the median wall time of a
whole call (what a ``for`` loop pays) and of its ``-v`` fit stage, and the new/old ratios.
Both workers must be idle-started from the same interpreter, so only the code differs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perfile_bench import make_photos

#: A launcher in a folder of its own: ``python -c`` would put the working folder on
#: ``sys.path``, whose time (part of the worker's identity) changes as outputs are written.
LAUNCHER = "from colorquant.launch import main\nmain()\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--colors", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cqab", dir="/tmp"))
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    envs = {}
    for name, tree in trees.items():
        runtime = work / f"rt-{name}"
        runtime.mkdir(mode=0o700)
        envs[name] = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PYTHONPATH": str(tree)}
    (work / "bin").mkdir()
    launcher = work / "bin" / "cq.py"
    launcher.write_text(LAUNCHER)

    def call(name: str, *argv: str) -> tuple[float, str]:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(launcher), *argv], env=envs[name],
                              capture_output=True, text=True, check=True)
        return time.perf_counter() - start, proc.stderr + proc.stdout

    try:
        photos = make_photos(work / "src", args.files)
        for name in trees:
            call(name, "--worker-start")
            for _ in range(120):  # a new checkout compiles its numba loops once
                if "pid" in call(name, "--worker-status")[1]:
                    break
                time.sleep(1.0)
            for k in args.colors:  # warm: each route once
                call(name, str(photos[0]), "-k", str(k), "-o", str(work / f"{name}.png"))
        print(f"{args.files} photos; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
        print("\n| k | old call s | new call s | new / old | old fit s | new fit s | new / old |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for k in args.colors:
            calls: dict[str, list[float]] = {n: [] for n in trees}
            fits: dict[str, list[float]] = {n: [] for n in trees}
            for r in range(args.rounds):
                for photo in photos:
                    for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                        wall, text = call(name, str(photo), "-k", str(k), "-v", "-o",
                                          str(work / f"{name}.png"))
                        calls[name].append(wall)
                        fits[name].append(float(re.search(r"fit ([0-9.]+)s", text)[1]))
            c = {n: statistics.median(v) for n, v in calls.items()}
            f = {n: statistics.median(v) for n, v in fits.items()}
            print(f"| {k} | {c['old']:.3f} | {c['new']:.3f} | {c['new'] / c['old']:.3f} | "
                  f"{f['old']:.3f} | {f['new']:.3f} | {f['new'] / f['old']:.3f} |")
    finally:
        for name in trees:
            subprocess.run([sys.executable, str(launcher), "--worker-stop"], env=envs[name],
                           capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
