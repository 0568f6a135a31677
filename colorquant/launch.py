"""The ``colorquant`` command's entry point: hand the call to a warm worker, else run it here.

This module imports only the standard library, so a call that a worker (``worker.py``)
serves never loads numpy, Pillow or scikit-learn in this process. The client sends its
argv, environment, umask, working directory and standard descriptors over a Unix socket,
forwards signals to the worker's child and exits with the child's status. When no
compatible worker answers within :data:`TIMEOUT` seconds, the call runs in this process
exactly as without a worker (``cli.main``), and just before exiting it starts one worker in
the background for the calls that follow. ``COLORQUANT_WORKER=0`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import struct
import sys
import time

from . import __version__

TYPE_CHECKING = False  # the client imports no typing (3 ms of every call): hints only
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

#: Bumped whenever the client/worker messages change.
PROTOCOL = 1
#: Seconds to connect and get the worker's "accepted" before running in-process instead
#: (0.5 s was exceeded by a live worker on a 2-core machine at load 25).
TIMEOUT = 1.0
#: Seconds to get the "ready" of a worker that has accepted the connection.
HANDSHAKE = 5.0
#: ``0`` runs every call in-process and starts no worker.
SWITCH = "COLORQUANT_WORKER"
#: A file the client appends one line to per call: ``worker`` or ``local <reason>``.
TRACE = "COLORQUANT_WORKER_TRACE"
#: Seconds a worker waits for a call before it exits (default 600).
IDLE = "COLORQUANT_WORKER_IDLE"
#: Launcher-only variables: not part of the identity (they do not change what a call does).
OWN_PREFIX = "COLORQUANT_WORKER"
#: Environment read once at import by Python, the C libraries, numpy, SciPy, scikit-learn,
#: threadpoolctl, Pillow, numba (the worker loads it) or colorquant: a worker is used only
#: if these match exactly.
ENV_PREFIXES = ("PYTHON", "OMP_", "GOMP_", "KMP_", "OPENBLAS_", "GOTO", "MKL_", "BLIS_",
                "VECLIB_", "NUMEXPR_", "NPY_", "NUMPY_", "SCIPY_", "SKLEARN_", "JOBLIB_",
                "LOKY_", "THREADPOOLCTL", "PIL", "NUMBA_", "COLORQUANT_", "LC_", "LD_",
                "MALLOC_", "GLIBC_")
ENV_NAMES = ("LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP")
#: Resource limits the worker's children inherit from the worker, so they must match.
RLIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE",
           "RLIMIT_MEMLOCK", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_STACK")
#: Signals the client passes on to the child that runs its call.
FORWARDED = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2")
#: Set for the command's process when the caller has not set them, before numpy loads.
#: colorquant runs its numeric work on one thread (the fit under a limit of one; it
#: parallelizes over files, in processes): an OpenBLAS pool of one thread per core would only
#: be created at import, and every warm worker's child (a fork) paid about 45 ms a call to
#: restart it (0.365 s against 0.320 s a call at k=16 on a 0.4 MP photo, measured).
THREAD_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1"}
#: How the worker's Python is started: with the client's ``sys.path``, from ``/``.
BOOT = ("import json, os, sys; sys.path[:] = json.loads(os.environ.pop('COLORQUANT_WORKER_PATH'));"
        " from colorquant.worker import main; main()")


class Refused(Exception):
    """No worker can be used for this call (the reason is the message)."""


# --- where and who ------------------------------------------------------------------------


def runtime_dir(create: bool = True) -> str:
    """The socket folder: ``$XDG_RUNTIME_DIR/colorquant``, else ``$TMPDIR/colorquant-UID``.

    Refused unless it is a real folder (not a link) owned by this user and closed to group
    and others.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        path = os.path.join(base, "colorquant")
    else:
        path = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"colorquant-{os.getuid()}")
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise Refused(f"{path}: cannot create: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise Refused(f"{path}: {exc.strerror}") from None
    if not (st.st_mode & 0o170000 == 0o040000):
        raise Refused(f"{path}: not a folder")
    if st.st_uid != os.getuid():
        raise Refused(f"{path}: owned by uid {st.st_uid}, not {os.getuid()}")
    if st.st_mode & 0o077:
        raise Refused(f"{path}: open to group or others (mode {st.st_mode & 0o777:o})")
    return path


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def identity() -> str:
    """Everything a worker's children inherit from it that could change what a call does.

    The installed code (version, folder, every module's size and time), the interpreter and
    its flags, ``sys.path`` and its folders' times (an install or upgrade changes them), the
    environment read at import time, resource limits, CPU affinity, niceness and ids.
    """
    import resource

    package = os.path.dirname(os.path.abspath(__file__))
    files = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                   for e in os.scandir(package) if e.name.endswith(".py"))
    env = sorted((k, v) for k, v in os.environ.items()
                 if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES)
                 and not k.startswith(OWN_PREFIX))
    limits = [resource.getrlimit(getattr(resource, name)) for name in RLIMITS
              if hasattr(resource, name)]
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    parts = {
        "protocol": PROTOCOL, "version": __version__, "package": package, "files": files,
        "executable": sys.executable, "python": sys.version, "flags": repr(sys.flags),
        "xoptions": sorted(map(str, sys._xoptions.items())), "path": sys.path,
        "path_mtimes": [_mtime(p or ".") for p in sys.path], "env": env, "rlimits": limits,
        "affinity": affinity, "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "ids": [os.getuid(), os.getgid(), sorted(os.getgroups())],
    }
    return json.dumps(parts, sort_keys=True)


def digest(ident: str) -> str:
    """The short name of an identity (the socket and lock file names)."""
    import hashlib

    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One length-prefixed JSON message, with descriptors attached to its first bytes."""
    data = json.dumps(message).encode("ascii")
    data = struct.pack("!I", len(data)) + data
    sent = socket.send_fds(sock, [data], list(fds)) if fds else 0
    if sent < len(data):
        # never an empty send once all is out: the peer may have answered and closed by
        # then (a busy machine), and an empty send to a closed peer fails with EPIPE
        sock.sendall(data[sent:])


def _connect(path: str, timeout: float) -> socket.socket:
    """A connection to the worker at ``path`` (same user only), or ``Refused``."""
    if len(os.fsencode(path)) >= 108:
        raise Refused(f"{path}: socket path too long")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        if peer_uid(sock) != os.getuid():
            raise Refused(f"{path}: served by another user")
    except OSError as exc:
        sock.close()
        raise Refused(f"{path}: {exc.strerror or exc}") from None
    except Refused:
        sock.close()
        raise
    return sock


def _read_reply(sock: socket.socket) -> dict[str, Any]:
    """A length-prefixed JSON reply (status and stop requests)."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise Refused("the worker closed the connection")
        data += chunk
    return json.loads(data[4:])


# --- one call -----------------------------------------------------------------------------


def _dispositions() -> dict[str, str]:
    """How each signal is handled at start-up: ``ign``, ``int`` (KeyboardInterrupt), ``dfl``."""
    found = {}
    for num in signal.valid_signals():
        try:
            handler = signal.getsignal(num)
        except (OSError, ValueError):
            continue
        if handler is signal.SIG_IGN:
            found[str(int(num))] = "ign"
        elif handler is signal.default_int_handler:
            found[str(int(num))] = "int"
    return found


class _Forwarder:
    """Passes the forwarded signals on to the child (queued until its pid is known)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.saved: dict[int, Any] = {}
        for name in FORWARDED:
            num = getattr(signal, name)
            if signal.getsignal(num) is not signal.SIG_IGN:  # ignored stays ignored
                self.saved[num] = signal.signal(num, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.pid is None:
            self.pending.append(signum)
        else:
            _kill(self.pid, signum)

    def started(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            _kill(pid, signum)

    def restore(self) -> None:
        for num, handler in self.saved.items():
            signal.signal(num, handler)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _lines(sock: socket.socket) -> Any:
    """The status lines the worker and the child send (``P<pid>``, ``X<code>``, ``K<sig>``)."""
    buffer = b""
    while True:
        chunk = sock.recv(256)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode("ascii")


def serve(argv: Sequence[str], ident: str) -> int:
    """Run the call in a warm worker of this identity; returns the call's exit code.

    Raises ``Refused`` (with the reason) before anything ran when no worker answers.
    """
    folder = runtime_dir()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            raise Refused(f"descriptor {fd} is closed") from None
    sock = _connect(os.path.join(folder, digest(ident) + ".sock"), TIMEOUT)
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_PATH", 0)
        try:
            cwd = os.open(".", flags)
        except OSError as exc:
            raise Refused(f"working directory: {exc.strerror}") from None
        umask = os.umask(0)
        os.umask(umask)
        request = {"op": "run", "identity": ident, "argv0": sys.argv[0], "argv": list(argv),
                   "env": dict(os.environ), "umask": umask, "signals": _dispositions(),
                   "mask": sorted(map(int, signal.pthread_sigmask(signal.SIG_BLOCK, [])))}
        try:
            send_message(sock, request, [0, 1, 2, cwd])
            accepted = sock.recv(2)  # within TIMEOUT: the worker's loop is alive
            sock.settimeout(HANDSHAKE)  # then a busy machine may take longer to answer
            answer = sock.recv(2) if accepted == b"A\n" else accepted
        except OSError as exc:
            raise Refused(f"worker: {exc.strerror or exc}") from None
        finally:
            os.close(cwd)
        if answer != b"R\n":
            raise Refused(f"worker refused the call: {answer!r}")
        forwarder = _Forwarder()
        try:
            try:
                sock.sendall(b"G\n")
                sock.settimeout(None)
                for line in _lines(sock):
                    if line == "F":
                        raise Refused("the worker could not fork")
                    if line.startswith("P"):
                        forwarder.started(int(line[1:]))
                    elif line.startswith("X"):
                        return int(line[1:])
                    elif line.startswith("K"):
                        forwarder.restore()
                        _die(int(line[1:]))
            except OSError as exc:
                if forwarder.pid is None:
                    raise Refused(f"worker: {exc.strerror or exc}") from None
            if forwarder.pid is None:
                raise Refused("the worker closed the connection")
        finally:
            forwarder.restore()
        sys.stderr.write("Error: the colorquant worker ended without the call's status\n")
        return 1
    finally:
        sock.close()


def _die(signum: int) -> NoReturn:
    """End as the child ended: killed by the same signal."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


# --- starting, status, stopping -----------------------------------------------------------


def start_worker(ident: str, folder: str | None = None,
                 env: dict[str, str] | None = None) -> bool:
    """Start one detached worker for this identity unless one runs or is starting (a lock).

    ``env`` is the environment the identity was computed from (default: this one). Returns
    whether this call started it.
    """
    import fcntl
    import subprocess

    folder = folder or runtime_dir()
    name = digest(ident)
    if os.path.exists(os.path.join(folder, name + ".refused")):
        return False  # this environment cannot have a worker (see --worker-status)
    lock = os.open(os.path.join(folder, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a worker holds it for its whole life, or is starting
        env = {**(os.environ if env is None else env),
               "COLORQUANT_WORKER_PATH": json.dumps(sys.path),
               "COLORQUANT_WORKER_LOCK": str(lock), "COLORQUANT_WORKER_ID": name}
        try:
            subprocess.Popen([sys.executable, "-c", BOOT, "colorquant.worker", folder],
                             env=env, cwd="/", stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             close_fds=True, pass_fds=(lock,), start_new_session=True)
        except OSError:
            return False
        return True
    finally:
        os.close(lock)


def _request(path: str, op: str) -> dict[str, Any]:
    sock = _connect(path, 10.0)  # an explicit command: a busy machine may be slow
    try:
        send_message(sock, {"op": op})
        if sock.recv(2) != b"A\n":
            raise Refused(f"{path}: not a colorquant worker")
        return _read_reply(sock)
    except OSError as exc:
        raise Refused(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()


def workers(folder: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Every socket in the folder with the worker's status (None: nobody answers)."""
    found = []
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".sock"):
            path = os.path.join(folder, entry)
            try:
                found.append((path, _request(path, "status")))
            except Refused:
                found.append((path, None))
    return found


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _status(out: Callable[[str], None]) -> int:
    folder = runtime_dir()
    mine = digest(identity())
    running = False
    for path, info in workers(folder):
        if info is None:
            out(f"{path}: stale (no worker answers)")
            continue
        same = info.get("digest") == mine
        running = running or same
        out(f"{path}: pid {info['pid']}, up {info['uptime']:.0f} s, {info['calls']} calls, "
            f"{info['running']} running, RSS {info['rss_kb'] / 1024:.0f} MB, idle exit after "
            f"{info['idle']:.0f} s, "
            f"{'used by this command' if same else 'for another installation or environment'}")
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".refused"):
            with open(os.path.join(folder, entry), encoding="utf-8", errors="replace") as f:
                out(f"{os.path.join(folder, entry)}: no worker for this environment: "
                    f"{f.read().strip()}")
    if not running:
        out(f"no worker runs for this command (folder {folder})")
    return 0 if running else 1


def stop_all(folder: str, wait: float = 30.0) -> None:
    """Ask every worker in the folder to stop, wait until each is gone, remove its files."""
    pids = []
    for path, _ in workers(folder):
        with contextlib.suppress(Refused):
            pids.append(_request(path, "stop")["pid"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale, or its worker stops: no new call may find it
    deadline = time.monotonic() + wait
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            _kill(pid, signal.SIGKILL)
    for entry in os.listdir(folder):
        if entry.endswith((".refused", ".lock")):
            os.unlink(os.path.join(folder, entry))


def _start_and_wait(out: Callable[[str], None]) -> int:
    folder = runtime_dir()
    ident = identity()
    path = os.path.join(folder, digest(ident) + ".sock")
    start_worker(ident, folder)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            _request(path, "status")
            return 0
        except Refused:
            if os.path.exists(path[: -len(".sock")] + ".refused"):
                break
            time.sleep(0.05)
    out("Error: no worker started (see colorquant --worker-status)")
    return 1


COMMANDS = {"--worker-status": _status, "--worker-start": _start_and_wait}


def _trace(text: str) -> None:
    path = os.environ.get(TRACE)
    if path:
        with open(path, "a", encoding="utf-8") as trace:
            trace.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``colorquant`` command: a warm worker runs the call if one answers, else this
    process does (and starts a worker just before it exits)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, value in THREAD_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if len(argv) == 1 and argv[0] in (*COMMANDS, "--worker-stop"):
        try:
            if argv[0] == "--worker-stop":
                stop_all(runtime_dir())
                sys.exit(0)
            sys.exit(COMMANDS[argv[0]](print))
        except Refused as exc:
            print(f"Error: no worker can be used: {exc}", file=sys.stderr)
            sys.exit(1)
    start: Callable[[int], None] | None = None
    if os.environ.get(SWITCH) == "0":
        _trace("local off")
    else:
        ident = identity()  # before the call imports anything (scikit-learn sets variables)
        try:
            code = serve(argv, ident)
        except Refused as exc:
            _trace(f"local {exc}")
            start = functools.partial(_start_after, ident, dict(os.environ))
        else:
            _trace("worker")
            sys.exit(code)
    from . import cli

    cli.main(argv, before_exit=start)


def _start_after(ident: str, env: dict[str, str], code: int) -> None:
    """After an in-process call: start a worker for the next calls (never fails the call)."""
    with contextlib.suppress(OSError, Refused):
        start_worker(ident, env=env)
