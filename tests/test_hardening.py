"""Hardening: races for one output name, memory limits, durability, kills mid-batch.

Every test runs the real command in real processes on real files.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMMAND, SAMPLES, random_image
from PIL import Image


def _start(*args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(COMMAND), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_no_clobber_race_has_exactly_one_writer(tmp_path):
    """Processes started together for one output with --no-clobber (two ``make -j`` rules):
    each round exactly one writes (exit 0) and every other reports the skip (exit 15); the
    file is complete and is the winner's output (each racer uses its own seed, so the
    palettes differ)."""
    src = tmp_path / "in.png"
    Image.fromarray(random_image(96, 96, seed=3)).save(src)
    out = tmp_path / "out.png"
    racers = 3
    for round_ in range(8):
        out.unlink(missing_ok=True)
        procs = [_start(src, "-o", out, "--no-clobber", "--json", "-k", 8,
                        "--seed", 100 * round_ + i) for i in range(racers)]
        finished = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in finished)
        assert codes == [0] + [15] * (racers - 1), (round_, finished)
        winner = next(json.loads(stdout) for code, stdout, _ in finished if code == 0)
        for code, stdout, stderr in finished:
            if code == 15:
                record = json.loads(stdout)
                assert record["status"] == "skipped"
                assert stderr.decode() == f"Skipped: {out}: exists (--no-clobber)\n"
        with Image.open(out) as image:
            image.load()
            colors = image.getpalette()[: 3 * len(winner["palette"])]
        expected = [int(e["color"][i:i + 2], 16) for e in winner["palette"] for i in (1, 3, 5)]
        assert colors == expected
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]


# --- memory limits ------------------------------------------------------------------------


def _address_space_mib(code: str) -> int:
    """VmSize (MiB) of a fresh interpreter after running ``code``."""
    probe = (f"{code}\nfor line in open('/proc/self/status'):\n"
             "    if line.startswith('VmSize'):\n        print(int(line.split()[1]) // 1024)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def _run_limited(limit_mib: int, *args: object) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mib << 20, resource.RLIM_INFINITY))

    return subprocess.run([str(COMMAND), *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=120, check=False)


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory) -> Path:
    """A 24 MP JPEG photo (6000x4000, upscaled from a sample)."""
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    with Image.open(SAMPLES / "china.jpg") as image:
        image.convert("RGB").resize((6000, 4000), Image.BILINEAR).save(path, quality=90)
    return path


def _assert_out_of_memory(proc: subprocess.CompletedProcess[str], src: Path, folder: Path,
                          ) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {src}: not enough memory ("), lines
    assert "interrupt" not in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert [p.name for p in folder.iterdir()] == []  # no output, no temp file


def test_a_photo_that_does_not_fit_the_memory_limit_says_so(tmp_path, big_photo):
    """Under an address-space limit that holds the interpreter and its libraries but not a
    24 MP photo's pixels (measured: it needs a few hundred MiB more), the run says "not
    enough memory" in one line, exit 1, and leaves nothing."""
    from colorquant import memory

    base = _address_space_mib("import numpy, PIL.Image, colorquant.cli, colorquant.pipeline")
    limit = base + (memory._backend_need() >> 20) + 100
    out = tmp_path / "out.png"
    _assert_out_of_memory(_run_limited(limit, big_photo, "-o", out), big_photo, tmp_path)
    # the same photo and command with room enough: written (the limit was the only cause)
    assert _run_limited(limit + 1024, big_photo, "-o", out).returncode == 0


def test_a_limit_too_small_for_the_libraries_fails_at_once(tmp_path):
    """Below what scikit-learn and its OpenBLAS need to load, OpenBLAS would retry its
    allocation forever (a hang that ignores SIGTERM); the run refuses instead."""
    from colorquant import memory

    base = _address_space_mib("import numpy, PIL.Image, colorquant.cli, colorquant.pipeline")
    src = tmp_path / "small.png"
    Image.fromarray(random_image(40, 40, seed=5)).save(src)
    out = tmp_path / "out" / "small.png"
    out.parent.mkdir()
    limit = base + (memory._backend_need() >> 20) // 2
    _assert_out_of_memory(_run_limited(limit, src, "-o", out), src, out.parent)


# --- durability ---------------------------------------------------------------------------


def _traced_calls(tmp_path: Path, *args: object) -> list[str]:
    """The file-system calls of the main colorquant process (run under strace)."""
    log = tmp_path / "strace.log"
    proc = subprocess.run(["strace", "-o", str(log), "-e",
                           "trace=openat,fsync,fdatasync,rename,renameat,renameat2,link,linkat",
                           str(COMMAND), *map(str, args)], capture_output=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    log.unlink()
    return calls


@pytest.mark.skipif(shutil.which("strace") is None,
                    reason="needs strace (.ci/run installs it)")
@pytest.mark.parametrize("extra", [(), ("--no-clobber",)])
def test_output_is_flushed_before_its_name_and_folder_after(tmp_path, small_png, extra):
    """The temporary file is fsynced before it is renamed (or linked) into place, and the
    folder is fsynced after: a file reported as written survives a power cut."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.png"
    calls = _traced_calls(tmp_path, small_png, "-o", out, "-j", "1", *extra)
    temp = re.compile(r'openat\(.*"(' + re.escape(str(out_dir)) + r'/\.o\.png\.[^"]+\.tmp)"'
                      r'.*O_CREAT.* = (\d+)$')
    opened = [(i, m) for i, line in enumerate(calls) if (m := temp.search(line))]
    assert len(opened) == 1, calls
    start, match = opened[0]
    tmp_name, fd = match.group(1), match.group(2)
    placed = next(i for i, line in enumerate(calls) if tmp_name in line and i > start
                  and re.search(r"\b(rename|renameat2?|link|linkat)\(", line))
    assert any(re.search(rf"\bf(data)?sync\({fd}\) += 0", line)
               for line in calls[start:placed]), calls[start:placed + 1]
    folder = re.compile(r'openat\(.*"' + re.escape(str(out_dir)) + r'".*O_DIRECTORY.* = (\d+)$')
    after = calls[placed:]
    opened_dir = [m.group(1) for line in after if (m := folder.search(line))]
    assert opened_dir and any(re.search(rf"\bfsync\({opened_dir[0]}\) += 0", line)
                              for line in after), after
    with Image.open(out) as image:
        image.load()
    assert [p.name for p in out_dir.iterdir()] == ["o.png"]  # complete, no temp file
