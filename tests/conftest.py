"""Shared fixtures: sample images, the corpus, small generated images and the real command.

Every test that runs the command (``run`` or ``COMMAND``) runs twice: with the warm worker off
(``COLORQUANT_WORKER=0``, in-process) and through a warm worker (every call must be served by
it), so outputs, stdout, stderr and exit codes are proven the same in both modes. Each test
process (pytest-xdist runs one per core) uses a private ``XDG_RUNTIME_DIR``: no test touches
the user's worker or another process's, and every worker started by any test is stopped when
its process's session ends.
"""

from __future__ import annotations

import dis
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
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


# --- the two modes of the command ---------------------------------------------------------

def _session_runtime() -> Path:
    """The session's private runtime folder (short, for socket paths), made once per process
    (this file is imported twice: as pytest's ``conftest`` and as ``tests.conftest``)."""
    owner, _, path = os.environ.get("COLORQUANT_TEST_RUNTIME", "").partition(":")
    if owner != str(os.getpid()):
        path = tempfile.mkdtemp(prefix="cqrt", dir="/tmp")
        os.environ["COLORQUANT_TEST_RUNTIME"] = f"{os.getpid()}:{path}"
    os.environ["XDG_RUNTIME_DIR"] = path
    return Path(path)


RUNTIME = _session_runtime()
for _var in ("COLORQUANT_WORKER", "COLORQUANT_WORKER_TRACE", "COLORQUANT_WORKER_IDLE"):
    os.environ.pop(_var, None)


#: ``worker.SPARE_NAME``, the name of a worker's spare child (not imported: no colorquant here).
SPARE_NAME = b"cq-worker-spare"


def worker_pids(runtime: Path, spares: bool = False) -> list[int]:
    """Processes of workers whose socket folder is under ``runtime`` (also still starting),
    and their call's children, which share their command line; with ``spares``, also the
    spare child each keeps for its next call (``worker.SPARE_NAME``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if b"colorquant.worker" in args and state != b"Z" and any(
                a.startswith(os.fsencode(runtime)) for a in args) and (
                spares or not is_spare(int(entry))):
            found.append(int(entry))
    return found


def workers(runtime: Path) -> list[int]:
    """The workers under ``runtime`` themselves: :func:`worker_pids` without the processes a
    worker forked (a call's child finishing, or a spare not yet renamed), which come and go
    on their own; a second worker started beside the first is still counted."""
    found = worker_pids(runtime, spares=True)
    return [pid for pid in found if _parent(pid) not in found]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def is_spare(pid: int) -> bool:
    """Whether ``pid`` is a worker's spare child, waiting for a call (its name says so)."""
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().rstrip(b"\n") == SPARE_NAME
    except OSError:
        return False


def stop_workers(runtime: Path) -> list[int]:
    """Stop every worker under ``runtime`` and wait until each is gone; returns those that
    had to be killed (a clean stop returns [])."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    if (runtime / "colorquant").is_dir() and COMMAND.exists():
        subprocess.run([str(COMMAND), "--worker-stop"], env=env, capture_output=True,
                       timeout=120, check=False)
    killed = []
    deadline = time.monotonic() + 30
    while (pids := worker_pids(runtime)) and time.monotonic() < deadline:
        time.sleep(0.05)  # a worker still importing has no socket yet: it ends on SIGTERM
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
    while worker_pids(runtime, spares=True) and time.monotonic() < deadline:
        time.sleep(0.05)  # a spare ends by itself once its worker has
    for pid in worker_pids(runtime, spares=True):
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    return killed


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    killed = stop_workers(RUNTIME)
    shutil.rmtree(RUNTIME, ignore_errors=True)
    if killed:
        print(f"\nworkers that did not stop and were killed: {killed}", file=sys.stderr)
        session.exitstatus = 1


def _uses_command(function: types.FunctionType) -> bool:
    """Whether a test (or a helper of its module that it calls) runs the command."""
    seen = {function}
    stack = [function.__code__]
    while stack:
        code = stack.pop()
        module = ""
        for ins in dis.get_instructions(code):
            if ins.opname == "IMPORT_NAME":
                module = ins.argval
            elif ins.opname == "IMPORT_FROM" and module.endswith("conftest") \
                    and ins.argval in ("run", "COMMAND"):
                return True  # a local ``from tests.conftest import run``
            if ins.opname not in ("LOAD_GLOBAL", "LOAD_NAME"):
                continue
            obj = function.__globals__.get(ins.argval)
            if (isinstance(obj, Path) and obj == COMMAND) or (
                    getattr(obj, "__code__", None) is not None
                    and obj.__code__.co_filename == run.__code__.co_filename
                    and obj.__name__ == "run"):
                return True
            if isinstance(obj, types.FunctionType) and obj not in seen \
                    and obj.__module__ == function.__module__:
                seen.add(obj)
                stack.append(obj.__code__)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _uses_command(metafunc.function) \
            and not getattr(metafunc.module, "OWN_WORKER_MODES", False) \
            and metafunc.definition.get_closest_marker("in_process") is None:
        metafunc.parametrize("cli_mode", ["off", "worker"], indirect=True)


#: Tests that take minutes, run first: with the suite spread over processes (pytest-xdist),
#: one started last would keep its process busy after the others have finished.
LONG_TESTS = ("tests/test_hashmatrix.py::test_the_matrix_is_unchanged",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid not in LONG_TESTS)  # stable: the rest in order


_warm: set[frozenset[tuple[str, str]]] = set()


@pytest.fixture(autouse=True)
def cli_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
             tmp_path_factory: pytest.TempPathFactory) -> object:
    """``off``: every call in-process, no worker; ``worker``: every call served by a warm
    worker (checked through the launcher's trace file, which stdout and stderr never see).

    Autouse, so that it is part of every test's fixture closure: a fixture name that
    :func:`pytest_generate_tests` only appends to ``metafunc.fixturenames`` is parametrized
    but never set up (pytest 9). A test without the parameter (it runs no command, runs
    workers of its own, or is marked ``in_process``) runs its calls in-process.
    """
    mode = getattr(request, "param", None)
    if mode is None:  # in-process, unless the test sets up workers of its own
        monkeypatch.setenv("COLORQUANT_WORKER", "0")
        yield None
        return
    trace = tmp_path_factory.mktemp("trace") / "calls"
    monkeypatch.setenv("COLORQUANT_WORKER_TRACE", str(trace))
    monkeypatch.setenv("COLORQUANT_WORKER", "0" if mode == "off" else "1")
    key = frozenset(os.environ.items() - {("COLORQUANT_WORKER_TRACE", str(trace))})
    if mode == "worker" and key not in _warm:
        subprocess.run([str(COMMAND), "--worker-start"], check=True, timeout=300,
                       capture_output=True)
        trace.unlink(missing_ok=True)
    yield mode
    calls = trace.read_text().splitlines() if trace.exists() else []
    expected = "local off" if mode == "off" else "worker"
    assert calls, "the test ran no colorquant call"
    assert [c for c in calls if c != expected] == [], f"calls not run in mode {mode}"
    if mode == "worker":
        _warm.add(key)
