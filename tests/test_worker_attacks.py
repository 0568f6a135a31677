"""The warm worker under attack and under faults (issue 27), with real processes: sandboxed
callers (``unshare``, ``capsh``, a seccomp filter, resource limits), fake workers on the
socket, real signals and descriptor limits. Every worker a test starts is stopped (and waited
for) when it ends; every fake worker is a process the test ends itself."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import test_worker
from tests.conftest import COMMAND, random_image, worker_pids, workers
from tests.test_worker import (
    TIMEOUT,
    Runtime,
    children,
    gone,
    images,
    off,
    slow_args,
    wait_for,
)

#: test_worker's fixtures: a private runtime folder per test, one warm worker for the tests
#: that do not break it.
rt = test_worker.rt
warm = test_worker.warm

#: These tests choose how each call runs (conftest runs the others in both modes).
OWN_WORKER_MODES = True
PYTHON = COMMAND.read_text().splitlines()[0].removeprefix("#!")  # the console script's own
BIN = str(COMMAND.parent)


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image whose k=256 Lloyd fit takes a while: time to act mid-call."""
    from PIL import Image

    path = tmp_path_factory.mktemp("slow") / "noise.png"
    Image.fromarray(random_image(900, 1200, seed=7)).save(path)
    return path


def _have(*command: str) -> bool:
    """Whether the command runs here (not on the PATH: no; ``capsh`` is often in /sbin)."""
    try:
        return subprocess.run(command, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


def identity_name(env: dict[str, str]) -> str:
    """The socket name the command computes in this environment (its sys.path: the script's
    folder first)."""
    code = (f"import os, sys; sys.path[0] = {BIN!r}; from colorquant import launch\n"
            "for k, v in launch.THREAD_DEFAULTS.items(): os.environ.setdefault(k, v)\n"
            "print(launch.digest(launch.identity()))")
    return subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


# --- 1. a sandboxed caller is served only by a worker of its own sandbox ------------------


def _limited(**limits: int):
    def apply() -> None:
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))
    return apply


UNSHARE = [["-m"], ["-C"], ["-i"], ["-u"], ["-n"], ["-p", "-f"], ["-U", "-r"]]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Runtime]:
    """A warm worker for the sandbox tests (their in-process calls start workers of their
    own sandboxes in its folder, so the other tests' ``warm`` folder stays with one)."""
    runtime = Runtime()
    runtime.start()
    yield runtime
    runtime.close()


@pytest.mark.parametrize("flags", UNSHARE, ids=lambda f: "".join(f))
def test_a_caller_in_other_namespaces_is_not_served(sandbox, tmp_path, flags):
    """A call in a new namespace of any kind runs in-process, never in the warm worker
    outside it."""
    if not _have("unshare", *flags, "true"):
        pytest.skip(f"unshare {' '.join(flags)} is not allowed here")
    (src,) = images(tmp_path / "src", 1)
    sandbox.calls()
    proc = subprocess.run(["unshare", *flags, str(COMMAND), str(src), "-k", "8", "-o",
                           str(tmp_path / "o.png")], env=sandbox.env, capture_output=True,
                          timeout=TIMEOUT, check=False)
    assert (proc.returncode, proc.stderr) == (0, b"")
    (call,) = sandbox.calls()
    assert call.startswith("local "), call


def test_a_private_mount_gets_the_output_as_in_process(sandbox, tmp_path):
    """``unshare -m`` with a tmpfs over the output folder: the file lands in the namespace's
    tmpfs (as in-process), not in the folder outside it."""
    if not _have("unshare", "-m", "true"):
        pytest.skip("unshare -m is not allowed here")
    (src,) = images(tmp_path / "src", 1)
    out = tmp_path / "out"
    out.mkdir()
    script = 'mount -t tmpfs tmpfs "$1" && "$2" "$3" -k 8 -o "$1/o.png" && ls "$1"'
    sandbox.calls()
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(out), str(COMMAND),
                           str(src)], env=sandbox.env, capture_output=True, timeout=TIMEOUT,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [b"o.png"]  # inside the namespace
    assert list(out.iterdir()) == []  # and not outside it
    assert sandbox.calls()[0].startswith("local ")


#: A client that forges the identity of an unsandboxed caller and asks the worker directly.
FORGER = """
import sys
sys.path[0] = {bin!r}
from colorquant import launch
ident = sys.stdin.read()
argv = sys.argv[1:]
try:
    if hasattr(launch, "Folder"):
        code = launch.serve(argv, ident, launch.runtime_dir())
    else:
        code = launch.serve(argv, ident)
except launch.Refused as exc:
    print("refused:", exc)
    sys.exit(3)
sys.exit(code)
"""


def _outside_identity(env: dict[str, str]) -> str:
    code = (f"import os, sys; sys.path[0] = {BIN!r}; from colorquant import launch\n"
            "for k, v in launch.THREAD_DEFAULTS.items(): os.environ.setdefault(k, v)\n"
            "sys.stdout.write(launch.identity())")
    return subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("kind", ["unshare-m", "capsh", "nice"])
def test_the_worker_checks_the_caller_itself(sandbox, tmp_path, kind):
    """A sandboxed client that sends the identity of an unsandboxed one (so it finds the
    warm worker's socket) is refused by the worker, which reads the caller's namespaces,
    capabilities and scheduling from the kernel: nothing runs, the output is not written."""
    (src,) = images(tmp_path / "src", 1)
    ident = _outside_identity(sandbox.env)
    forger = tmp_path / "forger.py"
    forger.write_text(FORGER.format(bin=BIN))
    call = [PYTHON, str(forger), str(src), "-k", "8", "-o", str(tmp_path / "o.png")]
    prefix = {"unshare-m": ["unshare", "-m"],
              "capsh": ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--"],
              "nice": ["nice", "-n", "5"]}[kind]
    if not _have(*prefix, *(["-c", "true"] if kind == "capsh" else ["true"])):
        pytest.skip(f"{prefix[0]} is not allowed here")
    if kind == "capsh":
        call = ["-c", " ".join(f"'{a}'" for a in call)]
    proc = subprocess.run([*prefix, *call], env=sandbox.env, input=ident.encode(),
                          capture_output=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert b"refused: the worker refused the call: the caller differs" in proc.stdout
    assert not (tmp_path / "o.png").exists()


def test_dropped_capabilities_read_no_more_through_the_worker(sandbox, tmp_path):
    """Root without cap_dac_override and cap_dac_read_search cannot read a file of another
    user that is closed to others: in-process the call fails, and so it does through the
    command with a worker running (never served by the worker with full capabilities)."""
    if os.getuid() != 0 or not _have("capsh", "--drop=cap_dac_override", "--", "-c", "true"):
        pytest.skip("needs root and capsh")
    (src,) = images(tmp_path / "src", 1)
    os.chown(src, 65534, 65534)
    src.chmod(0o600)
    tmp_path.chmod(0o755)

    def call(env: dict[str, str], out: str) -> subprocess.CompletedProcess[bytes]:
        line = f"'{COMMAND}' '{src}' -k 8 -o '{tmp_path / out}'"
        return subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--",
                               "-c", line], env=env, capture_output=True, timeout=TIMEOUT,
                              check=False)

    local = call(off(sandbox), "local.png")
    assert local.returncode == 1 and b"Permission denied" in local.stderr
    sandbox.calls()
    served = call(sandbox.env, "served.png")
    assert (served.returncode, served.stderr.replace(b"served", b"local")) == (
        local.returncode, local.stderr)
    assert not (tmp_path / "served.png").exists()
    assert sandbox.calls()[0].startswith("local ")


SECCOMP = """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
# one BPF instruction: return SECCOMP_RET_ALLOW (everything allowed, but a filter is set)
insn = struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000)
buf = ctypes.create_string_buffer(insn)
prog = struct.pack("HxxxxxxP", 1, ctypes.addressof(buf))
pbuf = ctypes.create_string_buffer(prog)
ul = ctypes.c_ulong
assert libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, ul(2), ul(ctypes.addressof(pbuf)), ul(0), ul(0)) == 0  # FILTER
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_seccomp_filter_runs_in_process_and_starts_no_worker(rt, tmp_path):
    """A filter cannot be read back and compared: the call runs in-process, and no worker is
    started for it (it would never serve)."""
    (src,) = images(tmp_path / "src", 1)
    helper = tmp_path / "seccomp.py"
    helper.write_text(SECCOMP)
    rt.start()
    rt.calls()
    before = workers(rt.root)
    proc = subprocess.run([PYTHON, str(helper), str(COMMAND), str(src), "-k", "8", "-o",
                           str(tmp_path / "o.png")], env=rt.env, capture_output=True,
                          timeout=TIMEOUT, check=False)
    assert (proc.returncode, proc.stderr) == (0, b"")
    (call,) = rt.calls()
    assert call.startswith("local ") and "seccomp" in call, call
    assert workers(rt.root) == before


def test_a_cpu_time_limit_runs_in_process(rt, tmp_path):
    """``ulimit -t``: a forked child starts at 0 s of CPU and skips the imports, so the
    limit would not stop the call where it stops in-process: no worker serves it, none is
    started for it."""
    (src,) = images(tmp_path / "src", 1)
    limit = _limited(RLIMIT_CPU=1000)
    start = subprocess.run([str(COMMAND), "--worker-start"], env=rt.env, capture_output=True,
                           timeout=TIMEOUT, preexec_fn=limit, check=False)
    assert start.returncode == 1 and b"CPU time limit" in start.stderr
    proc = subprocess.run([str(COMMAND), str(src), "-k", "8", "-o", str(tmp_path / "o.png")],
                          env=rt.env, capture_output=True, timeout=TIMEOUT, preexec_fn=limit,
                          check=False)
    assert (proc.returncode, proc.stderr) == (0, b"")
    (call,) = rt.calls()
    assert call.startswith("local ") and "CPU time limit" in call
    assert worker_pids(rt.root) == []


# --- 2. the runtime folder, through one descriptor ----------------------------------------


def test_a_folder_above_owned_by_another_user_is_refused(tmp_path):
    """``XDG_RUNTIME_DIR`` inside a folder that another user owns (root after ``su``):
    refused before anything is created, looked up or removed in it."""
    if os.getuid() != 0:
        pytest.skip("making a folder of another user needs root")
    runtime = Runtime()
    try:
        other = runtime.root / "other"
        other.mkdir(mode=0o755)
        os.chown(other, 65534, 65534)
        env = {**runtime.env, "XDG_RUNTIME_DIR": str(other)}
        start = subprocess.run([str(COMMAND), "--worker-start"], env=env, capture_output=True,
                               timeout=TIMEOUT, check=False)
        assert start.returncode == 1 and b"owned by uid 65534" in start.stderr
        (src,) = images(tmp_path / "src", 1)
        proc = subprocess.run([str(COMMAND), str(src), "-k", "8", "-o",
                               str(tmp_path / "o.png")],
                              env=env, capture_output=True, timeout=TIMEOUT, check=False)
        assert proc.returncode == 0
        assert runtime.calls()[0].startswith("local ")
        assert list(other.iterdir()) == [] and worker_pids(runtime.root) == []
    finally:
        runtime.close()


SWAPPER = """
import json, os, socket, struct, sys
folder, victim, moved = sys.argv[1:4]
server = socket.socket(socket.AF_UNIX)
server.bind(os.path.join(folder, "fake.sock"))
server.listen(4)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    data = conn.recv(4096)
    op = json.loads(data[4:])["op"]
    if op == "stop":  # the folder is swapped for a link to another while the stop runs
        os.rename(folder, moved)
        os.symlink(victim, folder)
    reply = json.dumps({"pid": os.getpid(), "uptime": 1, "calls": 0, "running": 0,
                        "rss_kb": 1, "digest": "x", "idle": 1}).encode()
    conn.sendall(b"A\\n" + struct.pack("!I", len(reply)) + reply)
    conn.close()
    if op == "stop":
        break
"""


def test_a_folder_swapped_during_a_stop_redirects_no_removal(rt):
    """A worker (here a fake one) swaps the runtime folder for a link to another folder
    while ``--worker-stop`` runs: the stop removes the lock files of the folder it opened,
    never those of the folder the link points to."""
    rt.folder.mkdir(mode=0o700)
    (rt.folder / "mine.lock").write_text("")
    victim = rt.root / "victim"
    victim.mkdir(mode=0o700)
    for name in ("keep.lock", "keep.refused"):
        (victim / name).write_text("precious")
    moved = rt.root / "moved"
    fake = subprocess.Popen([PYTHON, "-c", SWAPPER, str(rt.folder), str(victim), str(moved)],
                            stdout=subprocess.PIPE)
    try:
        assert fake.stdout.readline() == b"ready\n"
        stop = subprocess.run([str(COMMAND), "--worker-stop"], env=rt.env, capture_output=True,
                              timeout=TIMEOUT, check=False)
        assert stop.returncode == 0, stop.stderr
        assert fake.wait(timeout=TIMEOUT) == 0  # it was asked to stop: the swap happened
    finally:
        with contextlib.suppress(ProcessLookupError):
            fake.kill()
        fake.wait()
    assert rt.folder.is_symlink()
    assert sorted(p.name for p in victim.iterdir()) == ["keep.lock", "keep.refused"]
    assert not (moved / "mine.lock").exists()  # the opened folder's own were removed
    rt.folder.unlink()
    shutil.rmtree(moved)


# --- 3. fake and broken workers -----------------------------------------------------------


FAKE = """
import os, socket, struct, sys, time
path, log = sys.argv[1], sys.argv[2]
answer = bytes.fromhex(sys.argv[3])
hang = sys.argv[4] == "hang"
with_child = sys.argv[5] == "child"
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    accepted = time.monotonic()
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk, fds, _, _ = socket.recv_fds(conn, 1 << 16, 8)
        for fd in fds:
            os.close(fd)
        if not chunk:
            break
        data += chunk
    pid = 0
    if with_child:
        pid = os.fork()
        if pid == 0:  # a real child of this "worker", waiting to be told to start
            conn.settimeout(10)
            try:
                go = conn.recv(2)
            except OSError:
                go = b""
            with open(log, "a") as f:
                f.write("started\\n" if go == b"S\\n" else "not started\\n")
            if go == b"S\\n":
                conn.sendall(answer)
                if hang:
                    time.sleep(60)  # a call that never reports (a signal ends it)
            os._exit(0)
        conn.sendall(b"A\\nP%d\\n" % pid)
    else:
        conn.sendall(answer)
    if not hang and not with_child:
        # the end of the stream, but the client's sends still arrive (as a worker's would)
        with __import__("contextlib").suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
    if not with_child:
        conn.settimeout(30)
        with __import__("contextlib").suppress(OSError):
            while conn.recv(100):
                pass
        if hang:
            with open(log, "a") as f:
                f.write(f"client left after {time.monotonic() - accepted:.2f} s\\n")
    conn.close()
    if pid:
        os.waitpid(pid, 0)
"""


class Fake:
    """A fake worker process on the socket a call looks for."""

    def __init__(self, path: str, log: Path, answer: bytes, hang: bool = False,
                 child: bool = False) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [PYTHON, "-c", FAKE, path, str(log), answer.hex(), "hang" if hang else "-",
             "child" if child else "-"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout.readline() == b"ready\n"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def fake_at(rt: Runtime) -> Iterator:
    """Start fake workers on the socket that the command looks for in ``rt``."""
    rt.folder.mkdir(mode=0o700)
    path = str(rt.folder / (identity_name(rt.env) + ".sock"))
    made: list[Fake] = []

    def start(answer: bytes, **kwargs: bool) -> Fake:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        made.append(Fake(path, rt.root / f"fake{len(made)}.log", answer, **kwargs))
        return made[-1]

    yield start
    for fake in made:
        fake.close()


def _expected(rt: Runtime, src: Path) -> bytes:
    local = rt.run(src, "-k", "8", "-o", "-", env=off(rt))
    assert local.returncode == 0
    rt.calls()
    return local.stdout


@pytest.mark.parametrize("prefix", [b"A\n", b"A\nR\n"], ids=["accepted", "ready"])
@pytest.mark.parametrize("garbage", [b"\xff\xfe\n", b"Xfoo\n", b"P\n", b"P1\n", b"K\n",
                                     b"X1", b"\n", b"S\n"])
def test_a_worker_answering_garbage_means_in_process(rt, fake_at, tmp_path, prefix, garbage):
    """Bytes that are not the protocol: the call runs in-process once, no traceback."""
    (src,) = images(tmp_path / "src", 1)
    expected = _expected(rt, src)
    fake = fake_at(prefix + garbage)
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
    (call,) = rt.calls()
    assert call.startswith("local ")
    fake.close()


@pytest.mark.parametrize("answer", [b"A\n", b"A\nR\n", b""], ids=["accepted", "ready", "none"])
def test_a_silent_worker_is_given_up_within_the_handshake(rt, fake_at, tmp_path, answer):
    """A worker that answers part of the handshake and then nothing: the client gives up
    within the handshake's bound (1.5 s; the fake measures from its accept to the client
    closing) and runs the call in-process."""
    (src,) = images(tmp_path / "src", 1)
    expected = _expected(rt, src)
    fake = fake_at(answer, hang=True)
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")
    wait_for(fake.lines, "the fake to see the client leave")
    (left,) = fake.lines()
    assert float(left.split()[3]) < 3.0, left
    fake.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("handed_over", [False, True], ids=["handshake", "handed-over"])
def test_a_client_waiting_on_a_silent_worker_is_interruptible(rt, fake_at, tmp_path, signum,
                                                              handed_over):
    """Ctrl-C or SIGTERM while the handshake hangs, or while a call handed over to a child
    that never reports: exit 130 ("Error: interrupted"), nothing written; the signal went to
    the child it was handed to."""
    (src,) = images(tmp_path / "src", 1)
    fake = fake_at(b"" if handed_over else b"A\n", hang=True, child=handed_over)
    proc = subprocess.Popen([str(COMMAND), str(src), "-k", "8", "-o", str(tmp_path / "o.png")],
                            env=rt.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.4)  # connected and waiting (the bound is 1.5 s)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (130, b"Error: interrupted\n")
    assert not (tmp_path / "o.png").exists()
    if handed_over:
        assert fake.lines() == ["started"]
    fake.close()


def test_a_fake_child_pid_is_not_believed(rt, fake_at, tmp_path):
    """``P`` with the pid of a process that is not the worker's child (here: the test's own
    process): not a worker; nothing is sent signals, the call runs in-process."""
    (src,) = images(tmp_path / "src", 1)
    expected = _expected(rt, src)
    fake_at(b"A\nP%d\n" % os.getpid())
    proc = rt.run(src, "-k", "8", "-o", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")


CLIENT = """
import sys
sys.path[0] = {bin!r}
from colorquant import launch
try:
    if hasattr(launch, "Folder"):
        code = launch.serve(["x.png"], "fuzz", launch.runtime_dir())
    else:
        code = launch.serve(["x.png"], "fuzz")
except launch.Refused as exc:
    print("refused")
    sys.exit(0)
print("code", code)
sys.exit(0)
"""

TOKENS = [b"A\n", b"R\n", b"P\n", b"P1\n", b"X0\n", b"X3\n", b"K9\n", b"K15\n", b"F\n",
          b"N no\n", b"\xff\xfe", b"Xfoo\n", b"\n", b"A", b"X", b"9", b"K99999999999\n"]


def test_random_and_truncated_streams_never_hang_crash_or_run_twice(rt, tmp_path):
    """A property: whatever a fake worker sends (random tokens of the protocol, random
    bytes, cut anywhere, then closing or hanging), the client ends within its bounds, prints
    no traceback, and either falls back (nothing started) or reports the call as started by
    a real child of the worker that was told to start; never both, never neither."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    rt.folder.mkdir(mode=0o700)
    import importlib

    launch = importlib.import_module("colorquant.launch")
    path = str(rt.folder / (launch.digest("fuzz") + ".sock"))
    client = tmp_path / "client.py"
    client.write_text(CLIENT.format(bin=BIN))
    streams = st.one_of(
        st.lists(st.sampled_from(TOKENS), max_size=6).map(b"".join),
        st.binary(max_size=40),
        st.lists(st.sampled_from(TOKENS), max_size=4).map(lambda t: b"A\n" + b"".join(t)))
    counter = iter(range(10**6))

    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(stream=streams, cut=st.integers(0, 40), hang=st.sampled_from([False] * 5 + [True]),
           child=st.booleans())
    def check(stream: bytes, cut: int, hang: bool, child: bool) -> None:
        log = tmp_path / f"fake{next(counter)}.log"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # (a real child that never reports is a call still running: not hung, never given up)
        fake = Fake(path, log, stream[:cut], hang=hang and not child, child=child)
        try:
            proc = subprocess.run([PYTHON, str(client)], env=rt.env, capture_output=True,
                                  timeout=30, check=False)
        finally:
            fake.close()
        started = "started" in fake.lines()
        assert b"Traceback" not in proc.stderr, proc.stderr
        out = proc.stdout.decode()
        if proc.returncode < 0:  # ended as a killed child would (K<signal>)
            assert started
            return
        assert proc.returncode == 0, (proc.returncode, proc.stderr)
        assert (out.strip() == "refused") is (not started), (out, fake.lines())
        if started:
            assert out.startswith("code ")

    check()


# --- 4. the client ends as the child ended ------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV])
def test_a_child_killed_by_a_signal_ends_the_client_by_it(warm, tmp_path, slow_image, signum):
    """The OOM killer's SIGKILL (137 in a shell) or a crash's SIGSEGV (139): as in-process,
    and nothing printed."""
    pid = warm.start()  # the shared worker, started again if it went idle under load
    before = set(children(pid))
    warm.calls()
    proc = warm.popen(*slow_args(slow_image, tmp_path / "out.png"))
    wait_for(lambda: set(children(pid)) - before, "the call's child")
    (child,) = set(children(pid)) - before
    time.sleep(0.3)
    os.kill(child, signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (-signum, b"", b"")
    assert warm.calls() == ["worker"]


# --- 5. a worker out of descriptors keeps serving -----------------------------------------


def test_a_worker_out_of_descriptors_survives(rt, tmp_path, slow_image):
    """Concurrent calls under ``ulimit -n 16`` (the worker can take one call at a time):
    calls it cannot accept or take the descriptors of run in-process, all give the same
    output, and the same worker serves the next call. One call is held stopped in its
    child while the others arrive, so the limit is reached however busy the machine is."""
    limit = _limited(RLIMIT_NOFILE=16)
    srcs = images(tmp_path / "src", 6)
    start = subprocess.run([str(COMMAND), "--worker-start"], env=rt.env, capture_output=True,
                           timeout=TIMEOUT, preexec_fn=limit, check=False)
    assert start.returncode == 0, start.stderr
    (pid,) = workers(rt.root)
    expected = [rt.run(s, "-k", "8", "-o", "-", env=off(rt), preexec_fn=limit).stdout
                for s in srcs]
    rt.calls()
    held = rt.popen(*slow_args(slow_image, tmp_path / "held.png"), preexec_fn=limit)
    wait_for(lambda: children(pid), "the held call's child")
    (child,) = children(pid)
    os.kill(child, signal.SIGSTOP)
    try:
        procs = [subprocess.Popen([str(COMMAND), str(s), "-k", "8", "-o", "-"], env=rt.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=limit) for s in srcs]
        results = [(*p.communicate(timeout=TIMEOUT), p.returncode) for p in procs]
    finally:
        os.kill(child, signal.SIGCONT)
    assert results == [(e, b"", 0) for e in expected]
    assert held.communicate(timeout=TIMEOUT) == (b"", b"") and held.returncode == 0
    calls = rt.calls()
    assert len(calls) == 7 and "worker" in calls, calls  # the held call among them
    assert any(c.startswith("local ") for c in calls), calls  # the limit was reached
    assert workers(rt.root) == [pid]
    proc = rt.run(srcs[0], "-k", "8", "-o", "-", preexec_fn=limit)
    assert (proc.returncode, proc.stdout) == (0, expected[0])
    assert rt.calls() == ["worker"]


def test_a_worker_that_cannot_listen_says_so_once(rt, tmp_path):
    """``ulimit -n 8``: a worker cannot even set up its loop; it leaves a note, so the next
    calls run in-process without starting one that dies the same way each time."""
    limit = _limited(RLIMIT_NOFILE=8)
    start = subprocess.run([str(COMMAND), "--worker-start"], env=rt.env, capture_output=True,
                           timeout=TIMEOUT, preexec_fn=limit, check=False)
    assert start.returncode == 1
    status = rt.run("--worker-status", preexec_fn=limit)
    assert b"Too many open files" in status.stdout
    (src,) = images(tmp_path / "src", 1)
    local = rt.run(src, "-k", "8", "-o", "-", preexec_fn=limit, env=off(rt))
    proc = rt.run(src, "-k", "8", "-o", "-", preexec_fn=limit)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, local.stdout, local.stderr)
    assert rt.calls()[-1].startswith("local ")
    assert worker_pids(rt.root) == []


# --- 6. failures print what they print in-process -----------------------------------------


def test_an_escaping_error_prints_its_traceback_through_the_worker(rt, tmp_path):
    """A broken install of an optional library (a ``distributed`` whose import raises
    ``RuntimeError``, first on ``PYTHONPATH``) makes ``--dask local`` raise out of the command:
    a traceback in-process; the worker's child prints it too, from the command's frames down,
    and exits 1."""
    fake = tmp_path / "fake" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("a broken distributed install")\n')
    rt.env["PYTHONPATH"] = str(fake.parent)  # part of the identity: a worker of its own
    rt.start()
    (src,) = images(tmp_path / "src", 1)

    def call(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(COMMAND), str(src), "-k", "8", "-o", str(tmp_path / "o.png"),
                               "--dask", "local"], env=env, capture_output=True,
                              timeout=TIMEOUT, check=False)

    local = call(off(rt))
    rt.calls()
    served = call(rt.env)
    assert rt.calls() == ["worker"]
    assert local.returncode == served.returncode == 1
    assert local.stderr.startswith(b"Traceback (most recent call last):")

    def from_the_command(err: bytes) -> list[bytes]:
        lines = err.splitlines()
        first = next(i for i, line in enumerate(lines) if b"cli.py" in line)
        return [lines[0], *lines[first:]]

    assert from_the_command(served.stderr) == from_the_command(local.stderr)
    assert local.stderr.splitlines()[-1] == b"RuntimeError: a broken distributed install"
    assert not (tmp_path / "o.png").exists()


def test_a_deleted_working_directory_is_one_error_line(warm, tmp_path):
    """``cd d && rmdir ../d && colorquant rel.png``: one ``Error:`` line, exit 2, in both
    modes (it was a FileNotFoundError traceback in-process and silence through the worker)."""
    script = 'mkdir d && cd d && rmdir ../d && exec "$1" rel.png -k 8'
    results = []
    for env in (off(warm), warm.env):
        work = tmp_path / ("off" if env is not warm.env else "on")
        work.mkdir()
        results.append(subprocess.run(["sh", "-c", script, "sh", str(COMMAND)], cwd=work,
                                      env=env, capture_output=True, timeout=TIMEOUT,
                                      check=False))
    assert warm.calls() == ["local off", "worker"]
    for proc in results:
        assert proc.returncode == 2
        assert proc.stderr == (b"Error: the working directory no longer exists: relative "
                               b"paths cannot be resolved\n")


# --- 7. only calls keep a worker alive ----------------------------------------------------


def test_status_requests_do_not_keep_a_worker_alive(rt):
    """A worker polled by ``--worker-status`` (a prompt, a monitor) still exits after its
    idle time without calls."""
    rt.env["COLORQUANT_WORKER_IDLE"] = "2"
    pid = rt.start()
    deadline = time.monotonic() + 20
    while not gone(pid) and time.monotonic() < deadline:
        rt.run("--worker-status")
        time.sleep(0.2)
    assert gone(pid), "a worker polled for status never went idle"


# --- 8. a low descriptor limit, and a standard output that fails --------------------------


@pytest.mark.parametrize("limit", [12, 16, 24])
def test_a_descriptor_limit_prints_no_traceback(rt, tmp_path, limit):
    """``ulimit -n`` low: a batch with ``-j 2`` printed joblib's traceback (each pool process
    ran ``lscpu`` for scikit-learn, which failed with EMFILE), and at 12 the pool could not
    start (an ``OSError`` traceback). In both modes, alone or in a batch, ``-j 1`` or 2, every
    call now writes what it writes without a limit and prints nothing."""
    srcs = images(tmp_path / "src", 4)
    reference = tmp_path / "ref"
    assert rt.run(*srcs, "-k", "8", "-q", "--out-dir", reference, env=off(rt)).returncode == 0
    limited = _limited(RLIMIT_NOFILE=limit)
    subprocess.run([str(COMMAND), "--worker-start"], env=rt.env, capture_output=True,
                   timeout=TIMEOUT, preexec_fn=limited, check=False)
    rt.calls()
    for mode, env in (("off", off(rt)), ("on", rt.env)):
        for jobs, inputs in (("2", srcs), ("2", srcs[:1]), ("1", srcs)):
            out = tmp_path / f"{mode}-{jobs}-{len(inputs)}"
            proc = rt.run(*inputs, "-k", "8", "-q", "--out-dir", out, "-j", jobs, env=env,
                          preexec_fn=limited)
            assert (proc.returncode, proc.stderr) == (0, b""), (mode, jobs, len(inputs))
            names = sorted(p.name for p in out.iterdir())
            assert names == [f"img{i}-8c.png" for i in range(len(inputs))]
            for name in names:
                assert (out / name).read_bytes() == (reference / name).read_bytes()
    calls = rt.calls()
    assert calls[:3] == ["local off"] * 3
    if limit >= 16:  # a worker can serve there: the second mode really went through it
        assert calls[3:] == ["worker"] * 3, calls


def _stdout(kind: str) -> tuple[dict[str, object], list[int]]:
    """Arguments for subprocess.run whose standard output is ``kind``, and the descriptors to
    close afterwards."""
    if kind == "full":
        fd = os.open("/dev/full", os.O_WRONLY)
        return {"stdout": fd}, [fd]
    if kind == "closed":
        return {"preexec_fn": lambda: os.close(1)}, []
    read, write = os.pipe()  # a reader that went before anything was written
    os.close(read)
    return {"stdout": write}, [write]


@pytest.mark.parametrize("kind", ["full", "closed", "broken pipe"])
@pytest.mark.parametrize("data", ["--json", "-o -"])
def test_a_standard_output_that_fails_is_one_error_line(warm, tmp_path, kind, data):
    """``--json`` or ``-o -`` to a full device (``> /dev/full``), a closed descriptor
    (``>&-``) or a pipe whose reader went (``| head -c 1``): ``--json`` to /dev/full was an
    ``OSError`` traceback, and ``>&-`` an 'unexpected AttributeError' or nothing at all (exit
    0, the JSON lost). In both modes: one ``Error:`` line and exit code 1; a broken pipe ends
    the call quietly with 1; a closed standard output is found before anything is written."""
    (src,) = images(tmp_path / "src", 1)
    args = [str(src), "-k", "8", *(["--json", "-o", str(tmp_path / "o.png")]
                                   if data == "--json" else ["-o", "-"])]
    expected = {"full": b"Error: <stdout>: cannot write: No space left on device\n",
                "closed": b"Error: <stdout>: cannot write: standard output is closed\n",
                "broken pipe": b""}[kind]
    warm.calls()
    for env in (off(warm), warm.env):
        (tmp_path / "o.png").unlink(missing_ok=True)
        how, opened = _stdout(kind)
        try:
            proc = subprocess.run([str(COMMAND), *args], env=env, stderr=subprocess.PIPE,
                                  timeout=TIMEOUT, check=False, **how)  # type: ignore[arg-type]
        finally:
            for fd in opened:
                os.close(fd)
        assert (proc.returncode, proc.stderr) == (1, expected), env is warm.env
        if data == "--json":
            assert (tmp_path / "o.png").exists() == (kind != "closed")
    # a closed descriptor is never handed to a worker; the others are served by it
    assert warm.calls() == ["local off", "local descriptor 1 is closed" if kind == "closed"
                            else "worker"]


# --- issue 25, goal 5: calls that do no work start no worker ------------------------------


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["-h"], ["--no-such-option"],
                                  ["-k", "0", "x.png"]])
def test_help_version_and_usage_errors_start_no_worker(rt, args):
    proc = rt.run(*args)
    assert proc.returncode in (0, 2)
    assert rt.calls()[0].startswith("local ")
    assert worker_pids(rt.root) == []


def test_help_says_what_the_worker_is_and_how_to_turn_it_off(rt):
    text = rt.run("--help", env=off(rt)).stdout.decode()
    (line,) = [line for line in text.splitlines() if "COLORQUANT_WORKER=0" in line]
    assert "worker" in line.lower()


def _autogroup_nice(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except OSError:
        return None  # no autogroups on this kernel


def test_a_loading_worker_is_not_waited_for_and_takes_no_cpu_from_calls(rt, tmp_path):
    """The calls right after the one that started a worker run in-process while it loads,
    without waiting for it (here it is stopped mid-load: a call that waited would hang), and
    its loading does not compete with them: its session's scheduling group (where autogroups
    exist) runs at the lowest priority until it is ready, then at the caller's."""
    (src,) = images(tmp_path / "src", 1)
    first = rt.run(src, "-k", "8", "-o", "-")
    assert first.returncode == 0
    wait_for(lambda: worker_pids(rt.root), "the worker the first call started")
    (pid,) = worker_pids(rt.root)
    if _autogroup_nice(pid) is not None:  # until its group's priority is lowered
        wait_for(lambda: _autogroup_nice(pid) == 19, "the worker to lower its priority")
    os.kill(pid, signal.SIGSTOP)
    try:
        loading = _autogroup_nice(pid)
        second = rt.run(src, "-k", "8", "-o", "-")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (second.returncode, second.stdout, second.stderr) == (0, first.stdout, first.stderr)
    calls = rt.calls()
    assert len(calls) == 2 and all(c.startswith("local ") for c in calls), calls
    assert "No such file" in calls[1], calls  # no socket yet: nothing to wait for
    wait_for(lambda: rt.run("--worker-status").returncode == 0, "the worker to be ready")
    third = rt.run(src, "-k", "8", "-o", "-")
    assert (third.returncode, third.stdout) == (0, first.stdout)
    assert rt.calls()[-1] == "worker"
    if loading is not None:
        assert (loading, _autogroup_nice(pid)) == (19, 0)
