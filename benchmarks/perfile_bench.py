"""Per-file benchmark: one ``colorquant`` call per photo, as in a for loop or a Makefile.

    python benchmarks/perfile_bench.py [--files 40] [--rounds 3] [--colors 16 256]

Makes ``--files`` photos of about 0.4 MP (PNG) from the four Kodak photos of the shared
corpus (``$COLORQUANT_CORPUS``) and ``sample_images/*.jpg``: each is a crop of 70–100% of
its source, resized to about 0.4 MP (768×512 or 512×768 for a quarter turn), flipped or
turned by the image's number, so no two are alike. Then, round after round (the order of the
tools rotates each round), it times over the same files:

- a bash ``for`` loop and a ``make -j2`` pattern-rule Makefile, each running
  ``pngquant --nofs``, ``colorquant`` with the worker off (``COLORQUANT_WORKER=0``, what every
  call cost before the worker) and ``colorquant`` with a warm worker (started before the
  timing, in a private ``XDG_RUNTIME_DIR``), at every ``--colors``;
- (``--off-files N`` times the worker-off calls on the first N photos only: they are slow);
- the stages of a warm call (``-v``: read, histogram, fit, map, write), medians of
  ``--stage-calls`` calls at each ``--stage-colors``;
- the first call with no worker running (the call runs in-process and starts a worker just
  before it exits) against today's in-process entry point (``colorquant.cli:main``), on one
  photo, the worker stopped between trials (goal 2: at most 5% slower);
- with ``--cold-start ROUNDS`` only: the first, second and third call right after a cold
  start, on one photo (each at most the first call's time: the worker being started must
  not slow the calls that follow it), with how each ran (in-process or by the worker);

and prints the median seconds per file, the ratios to pngquant in the same form and round,
and the idle worker's resident memory. On a shared machine only the ratios mean much.
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
CORPUS = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
MAKEFILE = """\
SOURCES := $(sort $(wildcard $(SRC)/*.png))
all: $(patsubst $(SRC)/%,$(OUT)/%,$(SOURCES))
$(OUT)/%.png: $(SRC)/%.png
\t@$(TOOL) $< $@
"""
# the same command for both forms: ``TOOL SRC DST``
TOOLS = {
    "pngquant": 'exec pngquant --nofs --force --output "$2" {k} -- "$1"',
    "colorquant": 'exec "{cq}" "$1" -k {k} -q -o "$2"',
}


def sources() -> list[Image.Image]:
    paths = sorted((CORPUS / "photos").glob("kodak-*.png")) if (CORPUS / "photos").is_dir() \
        else sorted(CORPUS.rglob("kodak-*.png"))
    paths += sorted((ROOT / "sample_images").glob("*.jpg"))
    if not paths:
        raise SystemExit("no source photos found")
    return [Image.open(p).convert("RGB") for p in paths]


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` PNG photos of about 0.4 MP: crops of the sources, resized, flipped, turned."""
    rng = np.random.default_rng(seed)
    photos = sources()
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        photo = photos[i % len(photos)]
        share = rng.uniform(0.7, 1.0)
        w, h = int(photo.width * share), int(photo.height * share)
        x = int(rng.integers(0, photo.width - w + 1))
        y = int(rng.integers(0, photo.height - h + 1))
        image = photo.crop((x, y, x + w, y + h)).resize((768, 512), Image.Resampling.LANCZOS)
        turn = (i // len(photos)) % 4
        if turn == 1:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif turn == 2:
            image = image.transpose(Image.Transpose.ROTATE_90)
        elif turn == 3:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        path = folder / f"photo{i:02d}.png"
        image.save(path, compress_level=1)
        made.append(path)
    return made


def tool_script(folder: Path, name: str, tool: str, k: int) -> Path:
    script = folder / f"{name}-{k}.sh"
    script.write_text("#!/bin/sh\n" + TOOLS[tool].format(k=k, cq=COMMAND) + "\n")
    script.chmod(0o755)
    return script


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args[:6])}\n"
                         f"{proc.stderr.decode()[-2000:]}")
    return elapsed


def run_form(form: str, script: Path, src: Path, out: Path, env: dict[str, str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if form == "for loop":
        loop = f'for f in "{src}"/*.png; do "{script}" "$f" "{out}/${{f##*/}}" || exit 1; done'
        return timed(["bash", "-c", loop], env)
    return timed(["make", "-s", "-j2", "-f", str(src.parent / "bench.mk"), f"SRC={src}",
                  f"OUT={out}", f"TOOL={script}"], env)


STAGES = ("read", "histogram", "fit", "map", "write")


def warm_stages(photos: list[Path], k: int, calls: int, env: dict[str, str], work: Path,
                ) -> dict[str, float]:
    """Median seconds of each stage (the ``-v`` line) of ``calls`` warm calls at ``k``, one
    photo after another."""
    seen: dict[str, list[float]] = {}
    for i in range(calls):
        proc = subprocess.run([str(COMMAND), str(photos[i % len(photos)]), "-k", str(k), "-v",
                               "-o", str(work / "stage.png")], env=env, capture_output=True,
                              text=True, check=True)
        for line in proc.stderr.splitlines():
            if line.startswith("time: "):
                for item in line[6:].split(", "):
                    name, sec = item.split()
                    seen.setdefault(name, []).append(float(sec.rstrip("s")))
    return {name: statistics.median(values) for name, values in seen.items()}


def worker_rss_mb(runtime: Path) -> float | None:
    """The resident memory of the (idle) worker under ``runtime``, from /proc."""
    out = subprocess.run(["pgrep", "-f", f"colorquant.worker {runtime}"], capture_output=True,
                         text=True, check=False).stdout.split()
    for pid in out:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def compile_package(python: str, env: dict[str, str] | None = None) -> None:
    """Compile the bytecode of the colorquant that ``python`` imports (in ``env``), as
    ``pip install`` does: an editable install or a checkout under ``PYTHONDONTWRITEBYTECODE=1``
    (this machine's shells set it) would otherwise compile the command's modules from source
    at every call, 10 ms of each."""
    found = subprocess.run([python, "-c", "import colorquant, os; "
                            "print(os.path.dirname(colorquant.__file__))"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", found], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--colors", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--first-rounds", type=int, default=7,
                        help="trials of the first-call comparison (goal 2)")
    parser.add_argument("--forms", nargs="+", default=["for loop", "make -j2"])
    parser.add_argument("--stage-calls", type=int, default=20,
                        help="warm calls timed stage by stage (-v), per --stage-colors")
    parser.add_argument("--stage-colors", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--off-files", type=int, default=None, metavar="N",
                        help="time the worker-off calls on the first N photos only (slow)")
    parser.add_argument("--cold-start", type=int, default=0, metavar="ROUNDS",
                        help="only time the first, second and third call after a cold start "
                             "(no worker running), ROUNDS times, and exit")
    args = parser.parse_args()
    if args.cold_start:
        cold_start_main(args.cold_start, args.colors)
        return
    if shutil.which("pngquant") is None:
        raise SystemExit("pngquant is not installed")
    compile_package(str(COMMAND.parent / "python"))
    work = Path(tempfile.mkdtemp(prefix="cqpf", dir="/tmp"))
    runtime = work / "rt"
    runtime.mkdir(mode=0o700)
    try:
        src = work / "src"
        photos = make_photos(src, args.files)
        off_files = min(args.off_files or args.files, args.files)
        src_off = work / "src-off"
        src_off.mkdir()
        for photo in photos[:off_files]:
            shutil.copy(photo, src_off / photo.name)
        (work / "bench.mk").write_text(MAKEFILE)
        base = {k: v for k, v in os.environ.items() if not k.startswith("COLORQUANT_WORKER")}
        envs = {"pngquant": base, "worker off": {**base, "COLORQUANT_WORKER": "0"},
                "warm worker": {**base, "XDG_RUNTIME_DIR": str(runtime)}}
        subprocess.run([str(COMMAND), "--worker-start"], env=envs["warm worker"], check=True)
        print(f"{args.files} photos of 768x512 in {src}; {os.cpu_count()} CPUs; load "
              f"{os.getloadavg()[0]:.1f}; colorquant={COMMAND}", flush=True)
        names = list(envs)
        times: dict[tuple[int, str, str], list[float]] = {}
        for r in range(args.rounds):
            for k in args.colors:
                scripts = {n: tool_script(work, n.replace(" ", "-"),
                                          "pngquant" if n == "pngquant" else "colorquant", k)
                           for n in names}
                for form in args.forms:
                    order = names[r % len(names):] + names[: r % len(names)]
                    for name in order:
                        files = off_files if name == "worker off" else args.files
                        sec = run_form(form, scripts[name], src_off if name == "worker off"
                                       else src, work / "out", envs[name]) / files
                        times.setdefault((k, form, name), []).append(sec)
                        print(f"round {r + 1} k={k} {form} {name}: {sec:.3f} s a file "
                              f"({files} files)", flush=True)
        stage_rows = {k: warm_stages(photos, k, args.stage_calls, envs["warm worker"], work)
                      for k in args.stage_colors}
        time.sleep(1.0)  # idle
        rss = worker_rss_mb(runtime)
        subprocess.run([str(COMMAND), "--worker-stop"], env=envs["warm worker"], check=True)
        first = first_call(work, src / "photo00.png", base, args.first_rounds)
        print()
        print("| k | form | pngquant --nofs s/file | colorquant, worker off s/file "
              "| × pngquant | colorquant, warm worker s/file | × pngquant |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for k in args.colors:
            for form in args.forms:
                med = {n: statistics.median(times[(k, form, n)]) for n in names}
                pq = med["pngquant"]
                print(f"| {k} | {form} | {pq:.3f} | {med['worker off']:.3f} | "
                      f"{med['worker off'] / pq:.2f} | {med['warm worker']:.3f} | "
                      f"{med['warm worker'] / pq:.2f} |")
        print()
        print(f"stages of a warm call (`-v`, through the warm worker), median of "
              f"{args.stage_calls} calls, seconds:")
        print()
        print("| k | " + " | ".join(STAGES) + " |")
        print("|---:|" + "---:|" * len(STAGES))
        for k, row in stage_rows.items():
            print(f"| {k} | " + " | ".join(f"{row.get(s, 0.0):.3f}" for s in STAGES) + " |")
        today, start = first
        print()
        print(f"first call, no worker (in-process, starts one): {start:.3f} s; today's "
              f"in-process call: {today:.3f} s; ratio {start / today:.3f} (goal <= 1.05), "
              f"medians of {args.first_rounds}")
        print(f"idle worker resident memory: {rss or 0:.0f} MB")
    finally:
        subprocess.run([str(COMMAND), "--worker-stop"], env={**os.environ,
                       "XDG_RUNTIME_DIR": str(runtime)}, capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def first_call(work: Path, photo: Path, base: dict[str, str], rounds: int) -> tuple[float, float]:
    """Median seconds of today's entry point and of a first call that starts a worker."""
    today = work / "colorquant-today"
    today.write_text(f"#!{sys.executable}\nimport sys\nfrom colorquant.cli import main\n"
                     "sys.exit(main())\n")
    today.chmod(0o755)
    runtime = work / "first"
    env = {**base, "XDG_RUNTIME_DIR": str(runtime)}
    old, new = [], []
    for r in range(rounds):
        runtime.mkdir(mode=0o700, exist_ok=True)
        for which in (("today", "first") if r % 2 == 0 else ("first", "today")):
            if which == "today":
                old.append(timed([str(today), str(photo), "-k", "16", "-o",
                                  str(work / "t.png")], base))
            else:
                new.append(timed([str(COMMAND), str(photo), "-k", "16", "-o",
                                  str(work / "f.png")], env))
                # stop the worker it started (it must not run during the next trial)
                time.sleep(0.05)
                subprocess.run([str(COMMAND), "--worker-stop"], env=env, check=True)
                for pid in _workers(runtime):
                    os.kill(pid, 9)
    return statistics.median(old), statistics.median(new)


def cold_start(work: Path, photos: list[Path], base: dict[str, str], k: int,
               rounds: int) -> tuple[list[list[float]], list[list[str]]]:
    """Seconds of the first, second and third call after a cold start (no worker: the first
    call runs in-process and starts one; the next ones follow at once, as in a loop), and
    how each ran (the launcher's trace), ``rounds`` times, each from a new runtime folder.
    The three calls quantize the same photo (to three outputs), so that only what runs
    beside them (a worker loading) can make one slower than another."""
    times: list[list[float]] = [[], [], []]
    how: list[list[str]] = [[], [], []]
    for r in range(rounds):
        runtime = work / f"cold{k}-{r}"
        runtime.mkdir(mode=0o700)
        trace = work / f"cold{k}-{r}.trace"
        env = {**base, "XDG_RUNTIME_DIR": str(runtime), "COLORQUANT_WORKER_TRACE": str(trace)}
        for i, photo in enumerate([photos[0]] * 3):
            times[i].append(timed([str(COMMAND), str(photo), "-k", str(k), "-o",
                                   str(work / f"cold{i}.png")], env))
        lines = trace.read_text().splitlines()
        for i in range(3):
            how[i].append(lines[i].split(" ", 1)[0] if i < len(lines) else "?")
        subprocess.run([str(COMMAND), "--worker-stop"], env=env, capture_output=True,
                       check=False)
        for pid in _workers(runtime):
            os.kill(pid, 9)
    return times, how


def cold_start_main(rounds: int, colors: list[int]) -> None:
    """``--cold-start``: the first/second/third call table (issue 25, goal 5)."""
    work = Path(tempfile.mkdtemp(prefix="cqcs", dir="/tmp"))
    try:
        photos = make_photos(work / "src", 3)
        base = {k: v for k, v in os.environ.items() if not k.startswith("COLORQUANT_WORKER")}
        print(f"cold start: one photo of 768x512, 3 calls; {os.cpu_count()} CPUs; load "
              f"{os.getloadavg()[0]:.1f}; {rounds} rounds; colorquant={COMMAND}", flush=True)
        print("| k | 1st call s | 2nd call s | 3rd call s | 2nd / 1st | 3rd / 1st "
              "| how they ran (most rounds) |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for k in colors:
            times, how = cold_start(work, photos, base, k, rounds)
            med = [statistics.median(t) for t in times]
            ran = ", ".join(statistics.mode(h) for h in how)
            print(f"| {k} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} | "
                  f"{med[1] / med[0]:.2f} | {med[2] / med[0]:.2f} | {ran} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _workers(runtime: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"colorquant.worker {runtime}"], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


if __name__ == "__main__":
    main()
