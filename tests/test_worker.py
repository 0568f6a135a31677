"""The warm worker with real processes: concurrency, pipes, kills, stale sockets, folder
permissions and signals. Each test that kills or breaks a worker has its own runtime folder;
every worker a test starts is stopped (and waited for) when it ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorquant import fit, launch, worker
from tests.conftest import (
    COMMAND,
    is_spare,
    random_image,
    stop_workers,
    worker_pids,
    workers,
)

TIMEOUT = 300
#: These tests choose how each call runs (conftest runs the others in both modes).
OWN_WORKER_MODES = True


class Runtime:
    """A private XDG_RUNTIME_DIR with its environment for the command and its trace."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cqw", dir="/tmp"))  # short socket paths
        self.folder = self.root / "colorquant"
        self.trace = self.root / "trace"
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(self.root),
                    "COLORQUANT_WORKER_TRACE": str(self.trace), "COLORQUANT_WORKER_IDLE": "300"}
        self.env.pop("COLORQUANT_WORKER", None)

    def run(self, *args: object, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(COMMAND), *map(str, args)], env=kwargs.pop("env", self.env),
                              capture_output=True, timeout=TIMEOUT, check=False, **kwargs)

    def popen(self, *args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(COMMAND), *map(str, args)], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

    def start(self) -> int:
        """A warm worker for this environment; its pid."""
        proc = self.run("--worker-start")
        assert proc.returncode == 0, proc.stderr
        (pid,) = workers(self.root)
        return pid

    def calls(self) -> list[str]:
        """How each call ran since the last look (``worker`` or ``local <reason>``)."""
        lines = self.trace.read_text().splitlines() if self.trace.exists() else []
        self.trace.unlink(missing_ok=True)
        return lines

    def close(self) -> None:
        killed = stop_workers(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        assert killed == [], "a worker did not stop when asked"


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def warm() -> Iterator[Runtime]:
    """One warm worker shared by the tests that do not break it."""
    runtime = Runtime()
    runtime.start()
    yield runtime
    runtime.close()


def images(folder: Path, count: int, size: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(random_image(size, size + 8, seed=100 + i)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image whose k=256 Lloyd fit takes a while: time to act mid-call."""
    path = tmp_path_factory.mktemp("slow") / "noise.png"
    Image.fromarray(random_image(900, 1200, seed=7)).save(path)
    return path


def slow_args(src: Path, dst: Path) -> list[object]:
    return [src, "-k", "256", "--fit", "lloyd", "-o", dst]


def children(pid: int, spares: bool = False) -> list[int]:
    """The children of process ``pid`` (of a worker: its calls' children), and with
    ``spares`` its spare child too."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split() if spares or not is_spare(int(p))]


def spare_of(pid: int) -> int:
    """The spare child of worker ``pid``, once it has one."""
    found: list[int] = []
    wait_for(lambda: found.extend(p for p in children(pid, spares=True) if is_spare(p))
             or found, "the worker's spare child")
    return found[0]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return True
    return state == b"Z"


def off(rt: Runtime) -> dict[str, str]:
    return {**rt.env, "COLORQUANT_WORKER": "0"}


def test_a_megapixel_photo_through_the_worker_is_the_in_process_output(rt, tmp_path):
    """Above :data:`pixels.DENSE_FROM` pixels the worker counts the histogram with its
    compiled loops and the in-process call with ``numpy.add.at``: the same bytes at both fit
    routes (k <= 64 and k > 64)."""
    from colorquant import pixels

    height, width = 1000, 1100
    assert height * width >= pixels.DENSE_FROM
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(7).integers(-12, 13, (height, width, 3))
    array = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)],
                     axis=-1) + noise
    src = tmp_path / "photo.png"
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB").save(src)
    rt.start()
    rt.calls()
    for k in ("16", "100"):
        local = rt.run(src, "-k", k, "-o", "-", env=off(rt))
        served = rt.run(src, "-k", k, "-o", "-")
        assert local.returncode == 0 and served.returncode == 0, served.stderr
        assert served.stdout == local.stdout
    assert rt.calls() == ["local off", "worker"] * 2


# --- the client path ----------------------------------------------------------------------


def test_client_imports_only_the_standard_library(warm, tmp_path):
    """A call served by the worker loads no numpy, Pillow, scikit-learn, SciPy or Click, and
    of colorquant only the package and its launcher."""
    (src,) = images(tmp_path / "src", 1)
    report = tmp_path / "modules"
    # the console script's sys.path (its folder first), so the worker's identity matches
    code = f"""
import sys
sys.path[0] = {str(COMMAND.parent)!r}
sys.argv = [{str(COMMAND)!r}, {str(src)!r}, "-k", "8", "-o", {str(tmp_path / "o.png")!r}]
import os
from colorquant import launch
real_exit = os._exit
def report(code):  # the served client ends by os._exit: what it loaded until then
    with open({str(report)!r}, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    real_exit(code)
os._exit = report
launch.main()
"""
    python = COMMAND.read_text().splitlines()[0].removeprefix("#!")  # the script's own
    proc = subprocess.run([python, "-c", code], env=warm.env, capture_output=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert warm.calls() == ["worker"]
    modules = report.read_text().split()
    top = {m.split(".")[0] for m in modules}
    # what this interpreter loads before any code runs (site hooks: Debian's Python imports
    # its sitecustomize, .pth files their modules) is not the client's doing
    startup = subprocess.run([python, "-c", "import sys; print(' '.join(sys.modules))"],
                             env=warm.env, capture_output=True, text=True, check=True)
    before = {m.split(".")[0] for m in startup.stdout.split()}
    foreign = top - set(sys.stdlib_module_names) - before - {"colorquant", "__main__"}
    assert {m for m in foreign if not m.startswith(("__editable__", "_distutils_hack"))} == set()
    # nor the standard modules it does without (each costs every call milliseconds)
    assert {"enum", "collections", "contextlib", "functools", "json", "hashlib"} & (
        top - before) == set()
    assert {m for m in modules if m.startswith("colorquant")} == {"colorquant",
                                                                  "colorquant.launch"}
    assert (tmp_path / "o.png").exists()


def test_the_preload_does_once_what_a_first_call_would(tmp_path, china):
    """After the worker's preload, a call of either fit route (k <= 64, k > 64) imports no
    module and reads no package metadata: nothing a child would redo on every call."""
    out = tmp_path / "o.png"
    code = f"""
import importlib.metadata, sys
from colorquant import worker
assert worker._preload() is None
before = set(sys.modules)
scans = []
real = importlib.metadata.entry_points
importlib.metadata.entry_points = lambda *a, **k: scans.append(a) or real(*a, **k)
from colorquant import cli
for k in ("16", "256"):
    assert cli.run([{str(china)!r}, "-k", k, "-o", {str(out)!r}]) == 0
print(sorted(set(sys.modules) - before), len(scans))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, env={**os.environ, "PYTHONWARNINGS": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[] 0"
    assert out.exists()


def test_the_preload_leaves_one_thread_to_fork():
    """The worker forks a child per call, so after its preload (whose warm-up calls run the
    fit's passes on helper threads) it must be down to its one thread again."""
    code = """
import os, threading
from colorquant import fit, worker
seen = []
real = fit._pass_threads
def counted(points):
    context = real(points)
    seen.append(points)
    return context
fit._pass_threads = counted
assert worker._preload() is None
print(len(os.listdir("/proc/self/task")), threading.active_count(), max(seen))
"""
    env = {**os.environ, **launch.THREAD_DEFAULTS, "PYTHONWARNINGS": ""}  # as the worker's
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    tasks, threads, points = map(int, proc.stdout.splitlines()[-1].split())
    assert points >= 2 * fit.FAST_THREAD_POINTS  # the warm-up really split its passes
    assert (tasks, threads) == (1, 1)


def test_switch_off_starts_no_worker(rt, tmp_path):
    (src,) = images(tmp_path / "src", 1)
    proc = rt.run(src, "-k", "8", "-o", tmp_path / "o.png", env=off(rt))
    assert proc.returncode == 0 and proc.stderr == b""
    assert rt.calls() == ["local off"]
    assert worker_pids(rt.root) == [] and not rt.folder.exists()


# --- concurrency and descriptors ----------------------------------------------------------


def test_eight_simultaneous_calls_equal_sequential_ones(warm, tmp_path):
    srcs = images(tmp_path / "src", 8)
    sequential = []
    for i, src in enumerate(srcs):
        proc = warm.run(src, "-k", "8", "-o", tmp_path / f"seq{i}.png", "--json",
                        env=off(warm))
        sequential.append((proc.returncode, proc.stderr, (tmp_path / f"seq{i}.png").read_bytes()))
    assert warm.calls() == ["local off"] * 8
    procs = [warm.popen(src, "-k", "8", "-o", tmp_path / f"par{i}.png", "--json")
             for i, src in enumerate(srcs)]
    results = [(p.communicate(timeout=TIMEOUT), p.returncode) for p in procs]
    assert warm.calls() == ["worker"] * 8
    for i, (((out, err), code), (code0, err0, image0)) in enumerate(
            zip(results, sequential, strict=True)):
        assert (code, err) == (code0, err0)
        assert (tmp_path / f"par{i}.png").read_bytes() == image0
        assert b'"status": "ok"' in out


def test_large_palettes_are_the_same_through_the_worker(warm, tmp_path, flower):
    """The worker fits k>64 with the compiled assignment, an in-process call with BLAS blocks:
    the same bytes."""
    src = tmp_path / "flower.png"
    with Image.open(flower) as im:
        im.convert("RGB").resize((300, 200)).save(src)
    for k in ("100", "256"):
        local = warm.run(src, "-k", k, "-o", tmp_path / "local.png", env=off(warm))
        served = warm.run(src, "-k", k, "-o", tmp_path / "served.png")
        assert warm.calls() == ["local off", "worker"]
        assert local.returncode == served.returncode == 0
        assert (tmp_path / "local.png").read_bytes() == (tmp_path / "served.png").read_bytes()


def test_stdin_and_stdout_pipes_go_through_the_worker(warm, tmp_path):
    (src,) = images(tmp_path / "src", 1)
    data = src.read_bytes()
    local = warm.run("-", "-k", "8", "-o", "-", input=data, env=off(warm))
    served = warm.run("-", "-k", "8", "-o", "-", input=data)
    assert warm.calls() == ["local off", "worker"]
    assert served.returncode == local.returncode == 0
    assert served.stdout == local.stdout and served.stdout.startswith(b"\x89PNG")
    assert served.stderr == local.stderr == b""


def test_a_started_worker_holds_no_descriptor_of_the_caller(rt, tmp_path):
    """``out=$(colorquant x.png -o -)``: the first call starts a worker, and its pipe still
    closes when the call ends (communicate would wait for the worker's idle exit else)."""
    (src,) = images(tmp_path / "src", 1)
    proc = rt.popen(src, "-k", "8", "-o", "-")
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and out.startswith(b"\x89PNG")
    assert rt.calls()[0].startswith("local ")
    wait_for(lambda: rt.run("--worker-status").returncode == 0, "the worker started")
    assert rt.run(src, "-k", "8", "-o", "-").stdout == out
    assert rt.calls()[-1] == "worker"


def test_many_first_calls_start_one_worker(rt, tmp_path):
    """Eight calls with no worker (``make -j8``) run in-process and start one worker."""
    srcs = images(tmp_path / "src", 8)
    procs = [rt.popen(src, "-k", "8", "-o", tmp_path / f"o{i}.png")
             for i, src in enumerate(srcs)]
    for p in procs:
        p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0
    assert all(c.startswith("local ") for c in rt.calls())
    assert len(workers(rt.root)) == 1
    wait_for(lambda: rt.run("--worker-status").returncode == 0, "the worker started")
    assert len(workers(rt.root)) == 1


# --- the spare child ----------------------------------------------------------------------


def test_the_next_call_runs_in_the_spare_child(rt, tmp_path, slow_image):
    """Between calls a worker keeps one child forked ahead (its spare); the next call runs
    in it, with the same output as in-process, and once no call runs it forks the next."""
    expected = rt.run(*slow_args(slow_image, tmp_path / "ref.png"), env=off(rt))
    pid = rt.start()
    spare = spare_of(pid)
    assert children(pid) == []  # no call runs: the spare is not a call's child
    rt.calls()
    proc = rt.popen(*slow_args(slow_image, tmp_path / "out.png"))
    wait_for(lambda: children(pid), "the call's child")
    assert children(pid) == [spare]  # the spare took the call (and no longer says spare)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, err) == (0, expected.stderr)
    assert (tmp_path / "out.png").read_bytes() == (tmp_path / "ref.png").read_bytes()
    assert rt.calls() == ["worker"]
    wait_for(lambda: gone(spare), "the call's child to end")
    assert spare_of(pid) != spare


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace holds the child at its exit")
def test_the_next_spare_is_forked_when_the_call_reports_not_when_its_child_exits(rt, tmp_path):
    """A call's child that was the spare tells the worker when its call is over (its status
    sent to the client), then exits; tearing down a large call's memory takes a while, and
    in a ``for`` loop the next call comes meanwhile. So the worker forks the next spare at
    the report: here strace holds the child 20 s at its ``exit_group``, and the new spare
    is there (and the call has returned) while the old child still has not exited."""
    (src,) = images(tmp_path / "src", 1)
    expected = rt.run(src, "-k", "8", "-o", "-", env=off(rt)).stdout
    pid = rt.start()
    spare = spare_of(pid)
    tracer = subprocess.Popen(["strace", "-qq", "-o", os.devnull, "-e", "trace=exit_group",
                               "-e", "inject=exit_group:delay_enter=20000000", "-p", str(spare)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = Path(f"/proc/{spare}/status")
        wait_for(lambda: b"TracerPid:\t0\n" not in status.read_bytes(), "strace to attach")
        rt.calls()
        proc = rt.run(src, "-k", "8", "-o", "-")
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
        assert rt.calls() == ["worker"]
        found: list[int] = []
        wait_for(lambda: gone(spare) or found.extend(
            p for p in children(pid, spares=True) if p != spare and is_spare(p)) or found,
            "a new spare, or the old child's exit")
        assert found and not gone(spare), "the next spare waited for the child's exit"
    finally:
        tracer.kill()
        tracer.wait(timeout=TIMEOUT)
    wait_for(lambda: gone(spare), "the held child to exit once released")


def test_a_killed_spare_is_replaced_after_the_next_call(rt, tmp_path):
    """A spare that ends before its call (killed) costs nothing: the next call forks its own
    child, as with no spare, and after it the worker forks a new spare."""
    (src,) = images(tmp_path / "src", 1)
    expected = rt.run(src, "-k", "8", "-o", "-", env=off(rt)).stdout
    pid = rt.start()
    spare = spare_of(pid)
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: gone(spare), "the spare to end")
    rt.calls()
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
    assert rt.calls() == ["worker"]
    assert spare_of(pid) != spare


@pytest.mark.parametrize("how", ["stop", "stop, the spare stopped", "SIGKILL"])
def test_the_spare_ends_with_its_worker(rt, how):
    """The spare never outlives its worker: it ends when the worker stops (even a spare
    stopped by SIGSTOP, which cannot read its socket), and when the worker is killed (its
    socket to the worker closes)."""
    pid = rt.start()
    spare = spare_of(pid)
    if how.startswith("stop"):
        if how.endswith("stopped"):
            os.kill(spare, signal.SIGSTOP)
        assert rt.run("--worker-stop").returncode == 0
    else:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid) and gone(spare), "the worker and its spare to end")


@pytest.mark.skipif(not worker._glibc(), reason="the heap is made ready through glibc's mallopt")
def test_a_spare_takes_its_calls_heap_faults_ahead():
    """After :func:`worker._prefault`, the heap blocks a call allocates and writes (here
    16 MB, in 1 MB blocks) cost no page faults; in a child forked without it, they do (one
    per 4 KB page written, at least half of them), and so they do after a prefault that a
    waiting call stopped at once. Measured in children of a fresh single-threaded
    interpreter, as the worker is (the test process's own heap, after a thousand tests on
    helper threads, is not a worker's)."""
    code = """
import ctypes, os, resource, sys
from colorquant import worker

def faults(prefault):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            if prefault == "whole":
                worker._prefault()
            elif prefault == "stopped":
                worker._prefault(lambda: True)  # a call is waiting already
            libc = ctypes.CDLL(None)
            libc.malloc.restype = ctypes.c_void_p
            libc.malloc.argtypes = [ctypes.c_size_t]
            libc.free.argtypes = [ctypes.c_void_p]
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [libc.malloc(1 << 20) for _ in range(16)]
            for block in blocks:
                ctypes.memset(block, 1, 1 << 20)
            taken = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            for block in blocks:
                libc.free(block)
            os.write(write_end, b"%d" % taken)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        taken = int(pipe.read())
    assert os.waitpid(pid, 0)[1] == 0
    return taken

print(faults(None), faults("whole"), faults("stopped"))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    without, after, stopped = map(int, proc.stdout.split())
    pages = 16 * (1 << 20) // 4096
    assert without >= pages // 2
    assert after < pages // 20
    assert stopped >= pages // 2


# --- dead, stale and refused workers ------------------------------------------------------


def test_worker_killed_between_calls_and_stale_socket(rt, tmp_path):
    (src,) = images(tmp_path / "src", 1)
    expected = rt.run(src, "-k", "8", "-o", "-", env=off(rt)).stdout
    pid = rt.start()
    (sock,) = rt.folder.glob("*.sock")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), "the worker to die")
    assert sock.exists()  # stale: nobody listens
    rt.calls()
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
    assert rt.calls()[0].startswith("local ")
    stop_workers(rt.root)
    sock.write_bytes(b"not a socket")  # a stale file of the wrong kind
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
    rt.start()  # a new worker replaces the stale file
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
    assert rt.calls()[-1] == "worker"


def test_worker_killed_during_a_call_loses_nothing(rt, tmp_path, slow_image):
    out = tmp_path / "out.png"
    expected = rt.run(*slow_args(slow_image, tmp_path / "ref.png"), env=off(rt))
    assert expected.returncode == 0
    pid = rt.start()
    rt.calls()
    proc = rt.popen(*slow_args(slow_image, out))
    wait_for(lambda: children(pid), "the call's child")
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, err) == (0, expected.stderr)
    assert out.read_bytes() == (tmp_path / "ref.png").read_bytes()
    assert rt.calls() == ["worker"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "ref.png"]


@pytest.mark.parametrize("problem", ["mode", "owner", "symlink"])
def test_unsafe_socket_folder_is_refused(rt, tmp_path, problem):
    (src,) = images(tmp_path / "src", 1)
    expected = rt.run(src, "-k", "8", "-o", "-", env=off(rt)).stdout
    rt.calls()
    if problem == "symlink":
        target = rt.root / "elsewhere"
        target.mkdir(mode=0o700)
        rt.folder.symlink_to(target)
    else:
        rt.folder.mkdir(mode=0o700)
        if problem == "mode":
            rt.folder.chmod(0o755)
        elif os.getuid() == 0:
            os.chown(rt.folder, 65534, 65534)
        else:
            pytest.skip("changing a folder's owner needs root")
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
    (call,) = rt.calls()
    assert call.startswith("local ") and str(rt.folder) in call
    assert worker_pids(rt.root) == []  # and none was started
    assert list(rt.root.rglob("*.sock")) == []
    status = rt.run("--worker-status")
    assert status.returncode == 1 and b"no worker can be used" in status.stderr


# --- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_on_the_client_reaches_the_child(warm, tmp_path, slow_image, signum):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    pid = warm.start()  # the shared worker, started again if it went idle under load
    before = set(children(pid))
    warm.calls()
    # SIGINT as from a terminal's Ctrl-C (a shell's background job would ignore it)
    proc = warm.popen(*slow_args(slow_image, out),
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: set(children(pid)) - before, "the call's child")
    (child,) = set(children(pid)) - before
    time.sleep(0.3)  # into the fit
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert err.strip() == b"Error: interrupted"  # as in-process (Click starts a new line)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    wait_for(lambda: gone(child), "the child to end")
    assert warm.calls() == ["worker"]


def test_client_killed_stops_its_child(warm, tmp_path, slow_image):
    """The client is SIGKILLed: its child stops and cleans up, and writes nothing to the dead
    client's standard error (a pipe others may still read)."""
    out = tmp_path / "out.png"
    pid = warm.start()  # the shared worker, started again if it went idle under load
    before = set(children(pid))
    proc = warm.popen(*slow_args(slow_image, out))
    wait_for(lambda: set(children(pid)) - before, "the call's child")
    (child,) = set(children(pid)) - before
    time.sleep(0.3)
    proc.kill()
    _, err = proc.communicate(timeout=TIMEOUT)  # until the child closed the pipe too
    wait_for(lambda: gone(child), "the child to stop")
    assert err == b""
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file
    assert warm.run("--worker-status").returncode == 0  # the worker itself goes on


def test_a_child_exits_by_its_code_when_the_client_goes_after_the_status():
    """Once a worker's child has sent the call's status, its client ending (closing the
    connection, as every client does on the status) no longer stops the child: it exits with
    the call's code, not by the SIGTERM that stops the call of a client that went before."""
    from colorquant import worker

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child's part, as worker._child does it around a call
        code = 3
        try:
            ours.close()
            worker._watch_client(theirs)
            worker._report(theirs, 0)
            deadline = time.monotonic() + 1.0  # time for SIGIO to come once the client went
            while time.monotonic() < deadline:
                time.sleep(0.01)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    assert ours.recv(3) == b"X0\n"
    ours.close()  # the client ends on the status
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0


def test_a_child_lets_the_callers_output_go_before_it_reports():
    """A child sends the call's status only after letting go of the caller's standard
    descriptors: a caller reading the command's output (a pipe, ``$(...)``) sees its end
    with the status, not once the child has exited (after a large image the kernel takes a
    tenth of a second to tear its memory down before it closes the descriptors)."""
    from colorquant import worker

    ours, theirs = socket.socketpair()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's part, its standard output and error the caller's pipe
        code = 3
        try:
            ours.close()
            os.close(read_end)
            for fd in (1, 2):
                os.dup2(write_end, fd)
            os.close(write_end)
            os.write(1, b"output\n")
            worker._report(theirs, 0)
            time.sleep(2.0)  # alive, as a large call's child is while its memory goes
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    os.close(write_end)
    assert ours.recv(3) == b"X0\n"
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"output\n"  # its end, while the child still lives
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    ours.close()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_the_clients_json_is_the_json_modules():
    """The client writes its messages without importing :mod:`json`: for any value of the
    kinds it sends (strings with quotes, controls, non-ASCII, astral and lone surrogates as
    from undecodable file names; numbers; nesting), the text equals
    ``json.dumps(value, sort_keys=True)`` and reads back as the value."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF,
                                 blacklist_categories=()))
    scalars = (text | st.none() | st.booleans() | st.integers()
               | st.floats(allow_nan=False))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(text, inner, max_size=4), max_leaves=20)

    @settings(max_examples=300, deadline=None)
    @given(value=values)
    def check(value: object) -> None:
        written = launch.to_json(value)
        assert written == json.dumps(value, sort_keys=True)
        assert json.loads(written) == value

    check()
    assert launch.to_json(["\udcff", "\U0001f600", (1, 2.5)]) == json.dumps(
        ["\udcff", "\U0001f600", [1, 2.5]])
    with pytest.raises(TypeError):
        launch.to_json({1: "a key that is not a string"})


def test_docs_document_the_switches_commands_and_identity():
    from colorquant import launch

    page = Path(__file__).resolve().parent.parent / "docs" / "worker.md"
    section = page.read_text(encoding="utf-8")
    for needle in ("COLORQUANT_WORKER=0", launch.IDLE, launch.TRACE, "--worker-stop",
                   *launch.COMMANDS):
        assert needle in section
    for prefix in (*launch.ENV_PREFIXES, *launch.ENV_NAMES):
        assert f"`{prefix}" in section, prefix


@pytest.mark.parametrize(("name", "counts"), [("NUMBA_DISABLE_JIT", True),
                                              ("OMP_NUM_THREADS", True),
                                              ("COLORQUANT_WORKER_TRACE", False),
                                              ("SOME_OTHER_SETTING", False)])
def test_variables_read_at_import_are_part_of_the_identity(monkeypatch, name, counts):
    from colorquant import launch

    monkeypatch.delenv(name, raising=False)
    before = launch.identity()
    monkeypatch.setenv(name, "1")
    assert (launch.identity() != before) is counts


class _PeerAnswersAtOnce:
    """A real socket whose peer reads what arrives and closes as soon as a send returns:
    what a worker does on a busy machine while the sender is descheduled after its send."""

    def __init__(self, sock: socket.socket, peer: socket.socket) -> None:
        self.sock, self.peer = sock, peer
        self.received = b""
        self.fds: list[int] = []

    def _peer_reads_and_closes(self, sent: int) -> int:
        if self.peer.fileno() != -1 and sent:
            data, fds, _, _ = socket.recv_fds(self.peer, 1 << 16, 4)
            self.received += data
            self.fds += fds
            self.peer.close()
        return sent

    def send(self, data: bytes) -> int:
        return self._peer_reads_and_closes(self.sock.send(data))

    def sendmsg(self, *args: object) -> int:
        return self._peer_reads_and_closes(self.sock.sendmsg(*args))

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)  # an empty send to the closed peer raises BrokenPipeError
        self._peer_reads_and_closes(len(data))


@pytest.mark.parametrize("with_fds", [False, True])
def test_a_message_sent_in_full_needs_no_more_from_its_peer(with_fds):
    """A status request once reported a live worker as stale: its sender sent an empty
    remainder after the whole message, and the worker had already answered and closed."""
    from colorquant import launch

    sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    wrapped = _PeerAnswersAtOnce(sock, peer)
    try:
        launch.send_message(wrapped, {"op": "status"}, [0] if with_fds else [])
        (size,) = struct.unpack("!I", wrapped.received[:4])
        assert json.loads(wrapped.received[4:4 + size]) == {"op": "status"}
        assert len(wrapped.received) == 4 + size and len(wrapped.fds) == int(with_fds)
    finally:
        for fd in wrapped.fds:
            os.close(fd)
        sock.close()
        peer.close()
