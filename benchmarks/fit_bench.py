"""The fit's cost: its parts in-process, and the ``-v`` fit stage through the warm worker,
this install against another one side by side.

    python benchmarks/fit_bench.py --against /tmp/venv-main/bin/python [--rounds 3]
    python benchmarks/fit_bench.py --against /path/to/another/checkout [--rounds 3]

Runs on the four Kodak photos of the shared corpus (768x512, ``$COLORQUANT_CORPUS``) at
k = 16, 64 and 256:

- **parts** (``--parts``): in a fresh interpreter of each install, with the compiled kernel
  loaded as in the warm worker (``fit.load_kernel()``), the CPU (``process_time``) and wall
  time of each part of the fit, by wrapping the fit module's functions (grid reduction, the
  mini-batch runs and their starts, the Lloyd polish, ``fast_lloyd`` with its first
  pass and its compiled passes) and scikit-learn's ``MiniBatchKMeans.fit``; medians over
  the photos and rounds; parts nest as indented.
- **warm** (``--warm``): the ``fit`` stage of ``colorquant -v`` through each install's warm
  worker (each in its own ``XDG_RUNTIME_DIR``), and ``pngquant --nofs`` on the same photo,
  the tools alternating call by call; medians.

Both by default. ``--against`` takes another install's interpreter, or a checkout (a folder
with ``colorquant/`` in it): then both this checkout and that one run with this interpreter,
each first on ``PYTHONPATH``, so that only the code differs (two installs also differ in how
long their command takes to start: an editable install's import hook, for one). On a shared
machine only CPU times and ratios measured side by side mean much; the load average is
printed with each table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
COLORS = (16, 64, 256)
#: How a checkout's command is started: a launcher in a folder of its own (``python -c``
#: would put the working folder on ``sys.path``, whose time is part of a worker's identity).
LAUNCHER = "from colorquant.launch import main\nmain()\n"

#: Run by each install's interpreter: prints {k: {part: [[cpu, wall], ...]}} as JSON.
PARTS = r"""
import collections, json, sys, time
from PIL import Image
import sklearn.cluster
import colorquant
from colorquant import fit

fit.load_kernel()
seen = collections.defaultdict(lambda: [0.0, 0.0])

def wrap(owner, name, label):
    inner = getattr(owner, name, None)
    if inner is None:
        return
    def timed(*args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seen[label][0] += time.process_time() - cpu
            seen[label][1] += time.perf_counter() - wall
    setattr(owner, name, timed)

wrap(fit, "one_thread", "thread limit (one_thread)")
wrap(fit, "reduce_points", "grid reduction (reduce_points)")
wrap(fit, "_fit_points", "mini-batch start, k <= 64 (_fit_points)")
wrap(fit, "best_seeding", "  k-means++ seedings (best_seeding)")
wrap(sklearn.cluster.MiniBatchKMeans, "fit", "  MiniBatchKMeans.fit (with its own seeding on main)")
wrap(fit, "_lloyd", "  scikit-learn Lloyd polish (_lloyd)")
wrap(fit, "_fast_start", "mini-batch start, k > 64 (_fast_start)")
wrap(fit, "fast_lloyd", "exact passes (fast_lloyd)")
call = fit._Assignment.__call__
def counted(self, centers, scale):
    label = ("  first pass" if self.labels is None  # BLAS, or compiled from this round on
             else "  compiled passes" if self.compiled else "  BLAS passes")
    cpu, wall = time.process_time(), time.perf_counter()
    out = call(self, centers, scale)
    seen[label][0] += time.process_time() - cpu
    seen[label][1] += time.perf_counter() - wall
    seen["  passes (count)"][0] += 1
    return out
fit._Assignment.__call__ = counted
wrap(fit, "fit_centers", "whole fit (fit_centers)")

images = [Image.open(p).convert("RGB") for p in sys.argv[2:]]
for image in images:
    colorquant.quantize_image(image, 16)  # imports and first calls, not timed
out = {}
for k in (16, 64, 256):
    rows = collections.defaultdict(list)
    for _ in range(int(sys.argv[1])):
        for image in images:
            seen.clear()
            colorquant.quantize_image(image, k)
            for label, (cpu, wall) in seen.items():
                rows[label].append([cpu, wall])
    out[k] = rows
print(json.dumps({"out": out, "package": colorquant.__file__}))
"""


def photos() -> list[Path]:
    return sorted((CORPUS / "photos").glob("*.png"))


def environ(checkout: Path | None) -> dict[str, str]:
    """This environment, with ``checkout`` first on ``PYTHONPATH`` when given."""
    return {**os.environ, "PYTHONPATH": str(checkout)} if checkout else dict(os.environ)


def parts(installs: dict[str, tuple[str, Path | None]], rounds: int) -> None:
    """The parts table, one column pair (CPU, wall ms) per install."""
    got = {}
    for name, (python, checkout) in installs.items():
        # (from the root folder: a checkout in the current folder would shadow the install)
        proc = subprocess.run([python, "-c", PARTS, str(rounds), *map(str, photos())],
                              capture_output=True, text=True, check=True, cwd="/",
                              env={**environ(checkout), "COLORQUANT_WORKER": "0"})
        result = json.loads(proc.stdout)
        got[name] = result["out"]
        print(f"{name}: {result['package']}")
    print(f"\n### Parts of the fit, in-process with the compiled kernel (medians of "
          f"{rounds} rounds x {len(photos())} photos; load {os.getloadavg()[0]:.1f})\n")
    print("| k | part | " + " | ".join(f"{n}: CPU ms | {n}: wall ms" for n in installs) + " |")
    print("|---:|---|" + "---:|---:|" * len(installs))
    for k in COLORS:
        labels: list[str] = []
        for name in installs:
            labels += [lab for lab in got[name][str(k)] if lab not in labels]
        for label in labels:
            cells = []
            for name in installs:
                values = got[name][str(k)].get(label)
                if not values:
                    cells += ["—", "—"]
                elif label.endswith("(count)"):
                    cells += [f"{statistics.median(v[0] for v in values):.0f}", ""]
                else:
                    cells += [f"{statistics.median(v[0] for v in values) * 1000:.1f}",
                              f"{statistics.median(v[1] for v in values) * 1000:.1f}"]
            print(f"| {k} | {label} | " + " | ".join(cells) + " |")


def warm(installs: dict[str, tuple[str, Path | None]], rounds: int) -> None:
    """The -v fit stage through each install's warm worker, and pngquant's whole call."""
    work = Path(tempfile.mkdtemp(prefix="cqfit", dir="/tmp"))
    (work / "bin").mkdir()
    launcher = work / "bin" / "cq.py"
    launcher.write_text(LAUNCHER)
    commands = {name: [python, str(launcher)] if checkout else
                [str(Path(python).parent / "colorquant")]
                for name, (python, checkout) in installs.items()}
    envs = {}
    try:
        for name, command in commands.items():
            runtime = work / f"rt-{len(envs)}"
            runtime.mkdir(mode=0o700)
            envs[name] = {**{k: v for k, v in environ(installs[name][1]).items()
                             if not k.startswith("COLORQUANT_WORKER")},
                          "XDG_RUNTIME_DIR": str(runtime)}
            subprocess.run([*command, "--worker-start"], env=envs[name], check=True)
        fits: dict[tuple[str, int], list[float]] = {}
        calls: dict[tuple[str, int], list[float]] = {}
        for r in range(rounds):
            for k in COLORS:
                for photo in photos():
                    order = [*commands, "pngquant"]
                    order = order[r % len(order):] + order[: r % len(order)]
                    for name in order:
                        start = time.perf_counter()
                        if name == "pngquant":
                            subprocess.run(["pngquant", "--nofs", "--force", "--output",
                                            str(work / "pq.png"), str(k), str(photo)],
                                           check=True)
                        else:
                            proc = subprocess.run([*commands[name], str(photo), "-k", str(k),
                                                   "-v", "-o", str(work / "cq.png")],
                                                  env=envs[name], capture_output=True,
                                                  text=True, check=True)
                            line = next(x for x in proc.stderr.splitlines()
                                        if x.startswith("time: "))
                            stages = dict(item.split() for item in line[6:].split(", "))
                            fits.setdefault((name, k), []).append(
                                float(stages["fit"].rstrip("s")))
                        calls.setdefault((name, k), []).append(time.perf_counter() - start)
        print(f"\n### Through the warm worker ({rounds} rounds x {len(photos())} photos, "
              f"tools alternating call by call; load {os.getloadavg()[0]:.1f})\n")
        print("| k | " + " | ".join(f"{n}: fit stage s | {n}: call s" for n in commands)
              + " | pngquant --nofs: call s | " + " | ".join(f"{n} call × pngquant"
                                                           for n in commands) + " |")
        print("|---:|" + "---:|---:|" * len(commands) + "---:|" + "---:|" * len(commands))
        for k in COLORS:
            pq = statistics.median(calls[("pngquant", k)])
            cells = []
            for name in commands:
                cells += [f"{statistics.median(fits[(name, k)]):.3f}",
                          f"{statistics.median(calls[(name, k)]):.3f}"]
            ratios = [f"{statistics.median(calls[(n, k)]) / pq:.2f}" for n in commands]
            print(f"| {k} | " + " | ".join(cells) + f" | {pq:.3f} | " + " | ".join(ratios)
                  + " |")
    finally:
        for name, command in commands.items():
            if name in envs:
                subprocess.run([*command, "--worker-stop"], env=envs[name],
                               capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="PYTHON_OR_CHECKOUT",
                        help="another install's interpreter, or another checkout, measured "
                             "side by side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", action="store_true", help="only the in-process parts")
    parser.add_argument("--warm", action="store_true", help="only the warm-worker stage")
    args = parser.parse_args()
    other = Path(args.against) if args.against else None  # (a venv's python: not resolved)
    checkout = other is not None and (other / "colorquant").is_dir()
    installs: dict[str, tuple[str, Path | None]] = {
        "this": (sys.executable, ROOT if checkout else None)}
    if other is not None:
        installs["other"] = (sys.executable, other.resolve()) if checkout else (str(other), None)
    if not args.warm:
        parts(installs, args.rounds)
    if not args.parts:
        if shutil.which("pngquant") is None:
            raise SystemExit("pngquant is not installed")
        from perfile_bench import compile_package

        for python, path in installs.values():
            compile_package(python, environ(path))
        warm(installs, args.rounds)


if __name__ == "__main__":
    main()
