"""Hardening: races for one output name, memory limits, durability, kills mid-batch.

Every test runs the real command in real processes on real files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import COMMAND, SAMPLES, palette_image, random_image, run
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
    """A 48 MP JPEG photo (8000x6000, upscaled from a sample). At 24 MP the pixels fitted,
    on one machine, in the headroom the limit below leaves (about 100 MiB beyond a generous
    estimate of what scikit-learn needs); at 48 MP they need 200-300 MiB more than it."""
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    with Image.open(SAMPLES / "china.jpg") as image:
        image.convert("RGB").resize((8000, 6000), Image.BILINEAR).save(path, quality=90)
    return path


def _assert_out_of_memory(proc: subprocess.CompletedProcess[str], src: Path, folder: Path,
                          ) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {src}: not enough memory ("), lines
    assert "interrupt" not in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert [p.name for p in folder.iterdir()] == []  # no output, no temp file


# A call under a memory limit of its own never reaches a worker started without it (the
# limits are part of the worker's identity): it runs in-process in both modes.
@pytest.mark.in_process
def test_a_photo_that_does_not_fit_the_memory_limit_says_so(tmp_path, big_photo):
    """Under an address-space limit that holds the interpreter and its libraries but not a
    48 MP photo's pixels (see ``big_photo``), the run says "not enough memory" in one line,
    exit 1, and leaves nothing."""
    from colorquant import memory

    base = _address_space_mib("import numpy, PIL.Image, colorquant.cli, colorquant.files")
    limit = base + (memory._backend_need() >> 20) + 100
    out = tmp_path / "out.png"
    _assert_out_of_memory(_run_limited(limit, big_photo, "-o", out), big_photo, tmp_path)
    # the same photo and command with room enough: written (the limit was the only cause)
    assert _run_limited(limit + 1024, big_photo, "-o", out).returncode == 0


# A call under a memory limit of its own never reaches a worker started without it (the
# limits are part of the worker's identity): it runs in-process in both modes.
@pytest.mark.in_process
def test_a_limit_too_small_for_the_libraries_fails_at_once(tmp_path):
    """Below what scikit-learn and its OpenBLAS need to load, OpenBLAS would retry its
    allocation forever (a hang that ignores SIGTERM); the run refuses instead."""
    from colorquant import memory

    base = _address_space_mib("import numpy, PIL.Image, colorquant.cli, colorquant.files")
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
    # -s: whole paths (strace cuts strings at 32 bytes); COLORQUANT_WORKER=0: the call runs in
    # this traced process, not in a warm worker's child, which strace cannot follow.
    proc = subprocess.run(["strace", "-s", "4096", "-o", str(log), "-e",
                           "trace=openat,fsync,fdatasync,rename,renameat,renameat2,link,linkat",
                           str(COMMAND), *map(str, args)], capture_output=True, timeout=300,
                          check=False, env={**os.environ, "COLORQUANT_WORKER": "0"})
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    log.unlink()
    return calls


@pytest.mark.skipif(shutil.which("strace") is None,
                    reason="needs strace (.ci/run installs it)")
@pytest.mark.in_process
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


# --- kills and a changing file system, mid-batch --------------------------------------------


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_batch_killed_at_random_moments_leaves_only_complete_outputs(tmp_path):
    """2,000 tiny inputs, -j 2, the whole process group killed with SIGKILL at seeded random
    moments (three runs): every output present is complete and equal to an uninterrupted
    run's, the only other files are hidden temporary files (SIGKILL leaves them; at most one
    per worker), and a rerun with --no-clobber (as make would) finishes the rest."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(13)
    for i in range(2000):
        colors = rng.integers(0, 256, (4, 3), dtype=np.uint8)
        Image.fromarray(palette_image(colors, 8, 8, seed=i)).save(src / f"{i:04d}.png")
    reference = tmp_path / "reference"
    began = time.perf_counter()
    proc = run(src, "-r", "--out-dir", reference, "-j", "2", "-q")
    took = time.perf_counter() - began
    assert proc.returncode == 0, proc.stderr
    expected = _outputs(reference)
    assert len(expected) == 2000
    partial = []
    for round_ in range(3):
        out = tmp_path / f"out{round_}"
        victim = subprocess.Popen([str(COMMAND), str(src), "-r", "--out-dir", str(out), "-j",
                                   "2", "-q"], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # from its first output on (a busy machine delays the start more than the batch),
        # for a seeded share of the rest of the reference run's time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and victim.poll() is None and not (
                out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())):
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.1, 0.6)) * took)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        if not out.exists():
            continue
        written = _outputs(out)
        assert all(expected[name] == data for name, data in written.items())
        for name in written:
            with Image.open(out / name) as image:
                image.load()
        hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
        assert all(re.fullmatch(r"\.\d{4}-16c\.png\.\w+\.tmp", n) for n in hidden), hidden
        assert len(hidden) <= 2  # one per worker at most
        if 0 < len(written) < 2000:
            partial.append(out)
    assert partial  # some kill came mid-batch (else the test proves nothing)
    proc = run(src, "-r", "--out-dir", partial[0], "-j", "2", "-q", "--no-clobber")
    assert proc.returncode == 15, proc.stderr  # the outputs already written are skipped
    assert _outputs(partial[0]) == expected


@contextlib.contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """A folder nobody can add files to: mode 555, and for root (who ignores modes, as in
    CI) the immutable attribute (``chattr +i``), removed again afterwards."""
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True,
                                    check=False).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("running as root on a file system without chattr +i: no folder here is "
                    "read-only for root")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_output_folder_fails_alone(tmp_path):
    """An output folder that cannot be written: one Error line for its input, the others
    are written, exit 1."""
    good, locked = tmp_path / "good", tmp_path / "locked"
    for folder in (good, locked):
        folder.mkdir()
    srcs = [good / "a.png", locked / "b.png", good / "c.png"]
    for i, path in enumerate(srcs):
        Image.fromarray(random_image(10, 10, seed=i)).save(path)
    with _unwritable(locked):
        proc = run(*srcs, "-j", "1", "-q")
        assert sorted(p.name for p in locked.iterdir()) == ["b.png"]
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        re.escape(f"Error: {locked / 'b-16c.png'}: cannot write: ")
        + "(Permission denied|Operation not permitted)", lines[0]), lines
    assert sorted(p.name for p in good.iterdir()) == ["a-16c.png", "a.png", "c-16c.png",
                                                      "c.png"]


def test_output_folder_deleted_mid_batch(tmp_path):
    """The output folder disappears while the batch runs (the second input is a named pipe,
    so the run waits there while the folder is removed): one Error line for each input
    after it, the first output was written, exit 1, and the command does not recreate or
    leave anything."""
    first, later = tmp_path / "a.png", tmp_path / "c.png"
    for i, path in enumerate((first, later)):
        Image.fromarray(random_image(10, 10, seed=i)).save(path)
    pipe = tmp_path / "b.png"
    os.mkfifo(pipe)
    out = tmp_path / "out"
    proc = subprocess.Popen([str(COMMAND), first, pipe, later, "--out-dir", out, "-j", "1",
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(pipe, "wb") as writer:  # opens once colorquant opens the pipe to read it
        assert (out / "a-16c.png").exists()
        shutil.rmtree(out)
        writer.write(first.read_bytes())
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert stderr.splitlines() == [
        f"Error: {out / name}: output folder {str(out)!r} does not exist"
        for name in ("b-16c.png", "c-16c.png")]
    assert not out.exists()


def test_input_replaced_while_it_is_read(tmp_path):
    """An input rewritten while it is read: the reader gets the start of the old file and
    the rest of the new one (given here through a named pipe, so the tear is exact). One
    Error line for it, the next input is written, exit 1, nothing partial."""
    old, new, later = (tmp_path / n for n in ("old.png", "new.png", "c.png"))
    for i, path in enumerate((old, new, later)):
        Image.fromarray(random_image(32, 32, seed=10 + i)).save(path)
    old_bytes, new_bytes = old.read_bytes(), new.read_bytes()
    pipe = tmp_path / "b.png"
    os.mkfifo(pipe)
    out = tmp_path / "out"
    proc = subprocess.Popen([str(COMMAND), pipe, later, "--out-dir", out, "-j", "1", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(pipe, "wb") as writer:
        half = len(old_bytes) // 2
        writer.write(old_bytes[:half] + new_bytes[half:])
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {pipe}: corrupt"), lines
    assert sorted(p.name for p in out.iterdir()) == ["c-16c.png"]
