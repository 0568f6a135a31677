"""The ``colorquant`` command's entry point: hand the call to a warm worker, else run it here.

This module imports only the standard library, so a call that a worker (``worker.py``)
serves never loads numpy, Pillow or scikit-learn in this process. The client sends its
argv, environment, umask, working directory and standard descriptors over a Unix socket,
forwards signals to the worker's child and exits with the child's status. When no
compatible worker answers within about a second, or anything that answers does not speak
the protocol, the call runs in this process exactly as without a worker (``cli.main``), and
just before exiting it starts one worker in the background for the calls that follow.
``COLORQUANT_WORKER=0`` turns all of this off. ``docs/worker-security.md`` lists what a
worker compares before it serves a call.
"""

from __future__ import annotations

import _signal as signal  # the C modules: ``signal`` and ``socket`` import enum (6-7 ms)
import _socket as socket
import os
import struct
import sys
import time

from . import __version__

TYPE_CHECKING = False  # the client imports no typing (3 ms of every call): hints only
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn


class _suppress:
    """Ignore these exceptions in a ``with`` block: ``contextlib.suppress``, whose module
    (with the ``collections`` it imports) would cost every call about 4 ms."""

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, self.kinds)


#: Bumped whenever the client/worker messages change.
PROTOCOL = 2
#: Seconds to connect and get the worker's "accepted" (0.5 s was exceeded by a live worker on
#: a 2-core machine at load 25).
TIMEOUT = 1.0
#: Seconds from connecting to the pid of the child that will run the call; past it the call
#: runs in-process (the child, never told to start, exits without running it).
HANDSHAKE = 1.5
#: Seconds the client waits for the child's status after passing it a Ctrl-C or SIGTERM,
#: before it stops the child and ends as an interrupted call.
STOP_WAIT = 10.0
#: The longest status line of the protocol (``X``/``K``/``P`` and a number, ``N`` and a reason).
LINE_MAX = 200
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
#: Lines of ``/proc/PID/status`` that differ between any two processes (counters, ids,
#: memory, signal state the call sets itself): every other line must be the same.
VARYING_STATUS = frozenset((
    "Name", "Umask", "State", "Tgid", "Ngid", "Pid", "PPid", "TracerPid", "FDSize", "Threads",
    "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches", "NStgid", "NSpid", "NSpgid", "NSsid", "CoreDumping",
    "Kthread"))
VARYING_PREFIXES = ("Vm", "Rss", "Huge")
#: Signals the client passes on to the child that runs its call.
FORWARDED = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2")
#: Set for the command's process when the caller has not set them, before numpy loads.
#: colorquant runs its BLAS work on one thread (the fit under a limit of one; its own threads,
#: where it has any, are its compiled loops'): an OpenBLAS pool of one thread per core would only
#: be created at import, and every warm worker's child (a fork) paid about 45 ms a call to
#: restart it (0.365 s against 0.320 s a call at k=16 on a 0.4 MP photo, measured).
THREAD_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1"}
#: Arguments after which a call never starts a worker (they load nothing and fit nothing).
NO_WORK = ("--help", "-h", "--version")
#: How the worker's Python is started: with the client's ``sys.path``, from ``/``.
BOOT = ("import json, os, sys; sys.path[:] = json.loads(os.environ.pop('COLORQUANT_WORKER_PATH'));"
        " from colorquant.worker import main; main()")


class Refused(Exception):
    """No worker can be used for this call (the reason is the message)."""


class Unservable(Refused):
    """This process can never be served by a worker (no worker is started for it either)."""


class _Broken(Exception):
    """What came over the socket is not the protocol."""


class _Interrupted(BaseException):
    """A forwarded signal came before the call was handed over (nothing has run)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# --- where ----------------------------------------------------------------------------------

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Folder:
    """The runtime folder, opened once: every name below it is used through this descriptor
    (``dir_fd``, or ``/proc/self/fd/N/NAME`` for a socket), so no later rename or link of a
    folder on its path redirects a removal, a lock, a bind or a connect."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    def socket_path(self, name: str) -> str:
        """The path that reaches ``name`` through the open folder (short: fits ``sun_path``)."""
        return f"/proc/self/fd/{self.fd}/{name}"

    def display(self, name: str) -> str:
        return os.path.join(self.path, name)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _check_above(st: os.stat_result, path: str) -> None:
    """A folder on the way to the runtime folder: only this user or root may change it, or
    it is sticky (``/tmp``), where others cannot rename what they do not own."""
    if st.st_uid not in (0, os.getuid()):
        raise Refused(f"{path}: owned by uid {st.st_uid}, another user (a folder on the way "
                      f"to the socket folder)")
    if st.st_mode & 0o022 and not st.st_mode & 0o1000:
        raise Refused(f"{path}: writable by group or others and not sticky (a folder on the "
                      f"way to the socket folder)")


def runtime_dir(create: bool = True) -> Folder:
    """The socket folder: ``$XDG_RUNTIME_DIR/colorquant``, else ``$TMPDIR/colorquant-UID``.

    Opened component by component without following links, each folder above it owned by
    this user or root and not open to others' renames, the folder itself a real folder
    owned by this user and closed to group and others; else ``Refused``.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    name = "colorquant" if base else f"colorquant-{os.getuid()}"
    base = base or os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(base, name)
    real = os.path.realpath(base)  # links above are followed once, then every step checked
    fd = os.open("/", _DIRECTORY)
    walked = "/"
    try:
        for part in [p for p in real.split("/") if p]:
            _check_above(os.fstat(fd), walked)
            walked = os.path.join(walked, part)
            try:
                new = os.open(part, _DIRECTORY, dir_fd=fd)
            except OSError as exc:
                raise Refused(f"{walked}: {exc.strerror}") from None
            os.close(fd)
            fd = new
        _check_above(os.fstat(fd), walked)
        if create:
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise Refused(f"{path}: cannot create: {exc.strerror}") from None
        try:
            folder = os.open(name, _DIRECTORY, dir_fd=fd)
        except OSError as exc:
            reason = "not a folder (a link?)" if exc.errno in (20, 40) else exc.strerror
            raise Refused(f"{path}: {reason}") from None
    finally:
        os.close(fd)
    st = os.fstat(folder)
    problem = None
    if st.st_uid != os.getuid():
        problem = f"owned by uid {st.st_uid}, not {os.getuid()}"
    elif st.st_mode & 0o077:
        problem = f"open to group or others (mode {st.st_mode & 0o777:o})"
    if problem:
        os.close(folder)
        raise Refused(f"{path}: {problem}")
    return Folder(path, folder)


# --- who ------------------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


def context(pid: int | str = "self") -> dict[str, Any]:
    """What the kernel keeps per process and a fork inherits, read from ``/proc/PID``: its
    namespaces, the ids, capabilities, no-new-privileges, seccomp, affinity and the rest of
    its status, resource limits, scheduling (nice, policy, real-time priority), cgroups,
    root folder, security label, personality and OOM score adjustment.

    A worker serves a call only when the caller's context equals its own. ``Refused`` when
    any of it cannot be read (nothing can then be compared)."""
    base = f"/proc/{pid}"
    try:
        namespaces = {n: os.readlink(f"{base}/ns/{n}") for n in sorted(os.listdir(f"{base}/ns"))}
        status = {}
        for line in _read(f"{base}/status").splitlines():
            key, _, value = line.partition(":")
            if key not in VARYING_STATUS and not key.startswith(VARYING_PREFIXES):
                status[key] = " ".join(value.split())
        fields = _read(f"{base}/stat").rsplit(")", 1)[1].split()
        root = os.stat(f"{base}/root")
        try:
            label = _read(f"{base}/attr/current").strip("\0\n")
        except OSError as exc:
            if exc.errno != 22:  # EINVAL: no security module keeps labels
                raise
            label = None
        found = {"namespaces": namespaces, "status": status,
                 "sched": [fields[16], fields[37], fields[38]],  # nice, rt priority, policy
                 "limits": _read(f"{base}/limits"), "cgroup": _read(f"{base}/cgroup"),
                 "root": [root.st_dev, root.st_ino], "label": label,
                 "personality": _read(f"{base}/personality").strip(),
                 "oom_score_adj": _read(f"{base}/oom_score_adj").strip()}
    except (OSError, IndexError) as exc:
        raise Unservable(f"cannot read the process's state in {base}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    problem = unservable(found)
    if problem:
        raise Unservable(problem)
    return found


def unservable(found: dict[str, Any]) -> str | None:
    """Why no worker's child can be this process, whatever worker runs: a seccomp filter (a
    filter cannot be read back and compared) or a CPU-time limit (a forked child starts at
    0 s used and skips the imports, so the same limit would not stop the call where it
    stops in-process)."""
    if found["status"].get("Seccomp", "0") != "0":
        return "a seccomp filter is in force (it cannot be compared with the worker's)"
    for line in found["limits"].splitlines():
        if line.startswith("Max cpu time") and line.split()[3:5] != ["unlimited", "unlimited"]:
            return "a CPU time limit is set (ulimit -t: the worker's child would not be " \
                   "charged the imports)"
    return None


def difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """The first part of two contexts that differs (for the trace), or None."""
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
            return f"{key} {', '.join(names)}"
        return key
    return None


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def identity() -> str:
    """Everything a worker's children inherit from it that could change what a call does.

    The installed code (version, folder, every module's size and time), the interpreter and
    its flags, ``sys.path`` and its folders' times (an install or upgrade changes them), the
    environment read at import time, and the kernel's view of the process (:func:`context`:
    ids, resource limits, CPU affinity, niceness and the rest). ``Unservable`` for a process
    that no worker may serve.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    files = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                   for e in os.scandir(package) if e.name.endswith(".py"))
    env = sorted((k, v) for k, v in os.environ.items()
                 if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES)
                 and not k.startswith(OWN_PREFIX))
    parts = {
        "protocol": PROTOCOL, "version": __version__, "package": package, "files": files,
        "executable": sys.executable, "python": sys.version, "flags": repr(sys.flags),
        "xoptions": sorted(map(str, sys._xoptions.items())), "path": sys.path,
        "path_mtimes": [_mtime(p or ".") for p in sys.path], "env": env, "context": context(),
    }
    return to_json(parts)


#: What :func:`to_json` writes for the characters a JSON string cannot hold as they are.
_ESCAPES = {**{c: f"\\u{c:04x}" for c in (*range(0x20), 0x7F)}, 0x22: '\\"', 0x5C: "\\\\",
            0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


def to_json(value: Any) -> str:
    """``json.dumps(value, sort_keys=True)``, for the values the protocol sends (dicts with
    string keys, lists, tuples, strings, numbers, booleans, None), without importing
    :mod:`json`: with the :mod:`re` it loads, that import was about 4 ms of every call's
    client, which only ever writes JSON (the worker reads it with :mod:`json`)."""
    if isinstance(value, str):
        text = value.translate(_ESCAPES)
        if not text.isascii():  # as ensure_ascii: UTF-16 escapes (lone surrogates kept)
            text = "".join(_escaped(c) if c > "\x7f" else c for c in text)
        return f'"{text}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("JSON object keys must be strings")
        return "{" + ", ".join(f"{to_json(key)}: {to_json(item)}"
                               for key, item in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(to_json, value)) + "]"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _escaped(char: str) -> str:
    """A non-ASCII character as JSON's UTF-16 escapes."""
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"


def digest(ident: str) -> str:
    """The short name of an identity (the socket and lock file names)."""
    try:
        from _sha256 import sha256  # Python 3.11's own (hashlib loads OpenSSL: 2 ms)
    except ImportError:
        from hashlib import sha256

    return sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def peer(sock: socket.socket) -> tuple[int, int]:
    """The pid and user id of the process at the other end of a Unix socket
    (``SO_PEERCRED``: as it was when it connected; pid 0 when it is in another pid
    namespace)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket."""
    return peer(sock)[1]


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One length-prefixed JSON message, with descriptors attached to its first bytes."""
    data = to_json(message).encode("ascii")
    data = struct.pack("!I", len(data)) + data
    sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  struct.pack(f"{len(fds)}i", *fds))]) if fds else 0
    if sent < len(data):
        # never an empty send once all is out: the peer may have answered and closed by
        # then (a busy machine), and an empty send to a closed peer fails with EPIPE
        sock.sendall(data[sent:])


def _connect(path: str, shown: str, timeout: float) -> tuple[socket.socket, int]:
    """A connection to the worker at ``path`` (same user only) and its pid, or ``Refused``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        pid, uid = peer(sock)
        if uid != os.getuid():
            raise Refused(f"{shown}: served by another user")
        if pid <= 0:
            raise Refused(f"{shown}: served from another pid namespace")
    except OSError as exc:
        sock.close()
        raise Refused(f"{shown}: {exc.strerror or exc}") from None
    except Refused:
        sock.close()
        raise
    return sock, pid


class _Stream:
    """The status lines of the protocol, checked strictly: anything else is ``_Broken``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> tuple[str, str]:
        """The next line as (kind, argument); socket timeouts and errors pass through."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > LINE_MAX:
                raise _Broken("a line too long")
            chunk = self.sock.recv(256)
            if not chunk:
                raise _Broken("the connection closed")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        if not raw or len(raw) > LINE_MAX or not all(32 <= c < 127 for c in raw):
            raise _Broken(f"not a status line: {raw[:40]!r}")
        kind, argument = chr(raw[0]), raw[1:].decode("ascii")
        if kind in "AF" and argument == "":
            return kind, argument
        if kind in "PXK" and argument.isdigit() and len(argument) <= 9:
            return kind, argument
        if kind == "N":
            return kind, argument
        raise _Broken(f"not a status line: {raw[:40]!r}")


def _read_reply(sock: socket.socket, data: bytes = b"", limit: int = 1 << 20) -> dict[str, Any]:
    """A length-prefixed JSON reply (status and stop requests; ``data``: what has already
    arrived of it), or ``Refused``."""
    import json  # only here: the calls themselves send JSON but never read any

    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        if len(data) >= 4 and struct.unpack("!I", data[:4])[0] > limit:
            raise Refused("the worker's reply is too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise Refused("the worker closed the connection")
        data += chunk
    try:
        reply = json.loads(data[4:])
    except ValueError:
        raise Refused("the worker's reply is not JSON") from None
    if not isinstance(reply, dict):
        raise Refused("the worker's reply is not a JSON object")
    return reply


# --- one call -----------------------------------------------------------------------------


def _dispositions() -> dict[str, str]:
    """How each signal is handled at start-up: ``ign``, ``int`` (KeyboardInterrupt), ``dfl``."""
    found = {}
    for num in signal.valid_signals():
        try:
            handler = signal.getsignal(num)
        except (OSError, ValueError):
            continue
        if handler == signal.SIG_IGN:
            found[str(int(num))] = "ign"
        elif handler == signal.default_int_handler:
            found[str(int(num))] = "int"
    return found


class _Call:
    """The forwarded signals during a call: before the hand-over they interrupt the client
    (nothing has run), after it they go to the child."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.stop_by: float | None = None
        self.saved: dict[int, Any] = {}
        for name in FORWARDED:
            num = getattr(signal, name)
            if signal.getsignal(num) != signal.SIG_IGN:  # ignored stays ignored
                self.saved[num] = signal.signal(num, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.pid is None:
            raise _Interrupted(signum)
        _kill(self.pid, signum)
        if signum in (signal.SIGINT, signal.SIGTERM):
            # a second one stops waiting for the child's clean-up
            now = time.monotonic()
            self.stop_by = now if self.stop_by is not None else now + STOP_WAIT

    def restore(self) -> None:
        for num, handler in self.saved.items():
            signal.signal(num, handler)
        self.saved = {}


def _kill(pid: int, signum: int) -> None:
    with _suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _child_of(pid: int, parent: int) -> bool:
    """Whether ``pid`` is a live process of this user whose parent is ``parent``."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and fields[1] == str(parent)


def serve(argv: Sequence[str], ident: str, folder: Folder) -> int:
    """Run the call in a warm worker of this identity; returns the call's exit code.

    Raises ``Refused`` (with the reason) when nothing ran: no worker answers in time, it
    refuses, or what answers does not speak the protocol. ``_Interrupted`` when a forwarded
    signal comes before the call is handed over.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            raise Refused(f"descriptor {fd} is closed") from None
    # the caller's own dispositions and mask, before the forwarding handlers replace them
    dispositions = _dispositions()
    mask = sorted(map(int, signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    call = _Call()
    try:
        name = digest(ident) + ".sock"
        started = time.monotonic()
        sock, worker = _connect(folder.socket_path(name), folder.display(name), TIMEOUT)
        try:
            stream = _Stream(sock)
            request = {"op": "run", "identity": ident, "argv0": sys.argv[0], "argv": list(argv),
                       "env": dict(os.environ), "signals": dispositions, "mask": mask}
            _hand_over(sock, stream, worker, request, started, call)
            return _wait(sock, stream, call)
        finally:
            sock.close()
    finally:
        call.restore()


def _hand_over(sock: socket.socket, stream: _Stream, worker: int, request: dict[str, Any],
               started: float, call: _Call) -> None:
    """Send the request and start the call in the worker's child; ``Refused`` if nothing
    ran. The child runs the call only once it is told to (``S``), after its pid is known."""
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_PATH", 0)
        try:
            cwd = os.open(".", flags)
        except OSError as exc:
            raise Refused(f"working directory: {exc.strerror}") from None
        request["umask"] = os.umask(0)
        os.umask(request["umask"])
        try:
            send_message(sock, request, [0, 1, 2, cwd])
        finally:
            os.close(cwd)
        sock.settimeout(max(0.01, started + TIMEOUT - time.monotonic()))
        if stream.line() != ("A", ""):  # the worker's loop is alive
            raise _Broken("no 'accepted'")
        sock.settimeout(max(0.01, started + HANDSHAKE - time.monotonic()))
        kind, argument = stream.line()
        if kind == "N":
            raise Refused(f"the worker refused the call: {argument}")
        if kind == "F":
            raise Refused("the worker could not start a process for the call")
        if kind != "P":
            raise _Broken(f"{kind} before the child's pid")
        pid = int(argument)
        if not _child_of(pid, worker):
            raise _Broken(f"pid {pid} is not a process of the worker {worker}")
        call.pid = pid  # from now on the call is the child's: signals go to it
        try:
            sock.sendall(b"S\n")
        except OSError:
            call.pid = None  # the child did not get it and ends without running the call
            raise
    except TimeoutError:
        raise Refused("the worker did not answer in time") from None
    except _Broken as exc:
        raise Refused(f"not a colorquant worker ({exc})") from None
    except OSError as exc:
        raise Refused(f"worker: {exc.strerror or exc}") from None


def _wait(sock: socket.socket, stream: _Stream, call: _Call) -> int:
    """The status of a handed-over call (it cannot be run again here whatever happens)."""
    assert call.pid is not None
    try:
        while True:
            if call.stop_by is not None and time.monotonic() >= call.stop_by:
                _kill(call.pid, signal.SIGKILL)  # its clean-up did not end: stop it
                _message("Error: interrupted")
                return 130
            # a tick, so that a forwarded interruption's deadline is seen
            sock.settimeout(0.25 if call.stop_by is not None else 1.0)
            try:
                kind, argument = stream.line()
            except TimeoutError:
                continue
            if kind == "X":
                return min(int(argument), 255)
            if kind == "K":
                call.restore()
                _trace("worker")  # before this process ends by the child's signal
                _die(int(argument))
            raise _Broken(f"{kind} during the call")
    except (_Broken, OSError) as exc:
        if call.stop_by is not None:
            _message("Error: interrupted")
            return 130
        detail = "" if isinstance(exc, _Broken) and str(exc) == "the connection closed" \
            else f" ({exc})"
        _message(f"Error: the colorquant worker ended without the call's status{detail}")
        return 1


def _message(text: str) -> None:
    with _suppress(OSError, ValueError):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


#: Signals whose default action does not end a process (no child ends by them).
_NOT_FATAL = {getattr(signal, n) for n in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT",
                                           "SIGCHLD", "SIGURG", "SIGWINCH") if hasattr(signal, n)}


def _die(signum: int) -> NoReturn:
    """End as the child ended: killed by the same signal (its core, if any, is the child's:
    this process dumps none of its own)."""
    import resource

    with _suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if 0 < signum < signal.NSIG and signum not in _NOT_FATAL:
        with _suppress(OSError, ValueError):
            if signum not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
            os.kill(os.getpid(), signum)
    os._exit(128 + signum if 0 < signum < 128 else 1)


def _interrupted(signum: int) -> NoReturn:
    """A signal before the hand-over: end as an interrupted call ends (Ctrl-C, SIGTERM), or
    as the signal's default action ends a process."""
    if signum in (signal.SIGINT, signal.SIGTERM):
        _message("Error: interrupted")
        os._exit(130)
    _die(signum)


# --- starting, status, stopping -----------------------------------------------------------


def start_worker(ident: str, folder: Folder, env: dict[str, str] | None = None, *,
                 background: bool = False) -> bool:
    """Start one detached worker for this identity unless one runs or is starting (a lock).

    ``env`` is the environment the identity was computed from (default: this one). The
    worker gets the open folder itself. ``background``: it loads at the lowest CPU priority
    (started after a call, for the calls that follow, which run in-process meanwhile and
    must not compete with it). Returns whether this call started it.
    """
    import fcntl
    import subprocess

    name = digest(ident)
    with _suppress(FileNotFoundError):
        os.stat(name + ".refused", dir_fd=folder.fd, follow_symlinks=False)
        return False  # this environment cannot have a worker (see --worker-status)
    lock = os.open(name + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o600, dir_fd=folder.fd)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a worker holds it for its whole life, or is starting
        env = {**(os.environ if env is None else env),
               "COLORQUANT_WORKER_PATH": to_json(sys.path),
               "COLORQUANT_WORKER_LOCK": str(lock), "COLORQUANT_WORKER_DIR": str(folder.fd),
               "COLORQUANT_WORKER_ID": name, "COLORQUANT_WORKER_LOAD": "low" if background
               else "normal"}
        try:
            subprocess.Popen([sys.executable, "-c", BOOT, "colorquant.worker", folder.path],
                             env=env, cwd="/", stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             close_fds=True, pass_fds=(lock, folder.fd),
                             start_new_session=True)
        except OSError:
            return False
        return True
    finally:
        os.close(lock)


def _request(folder: Folder, name: str, op: str) -> dict[str, Any]:
    sock, _ = _connect(folder.socket_path(name), folder.display(name), 10.0)  # explicit
    try:
        send_message(sock, {"op": op})
        stream = _Stream(sock)
        if stream.line() != ("A", ""):
            raise _Broken("no 'accepted'")
        return _read_reply(sock, stream.buffer)
    except (OSError, _Broken) as exc:
        raise Refused(f"{folder.display(name)}: not a colorquant worker ({exc})") from None
    finally:
        sock.close()


def workers(folder: Folder) -> list[tuple[str, dict[str, Any] | None]]:
    """Every socket in the folder with the worker's status (None: nobody answers)."""
    found = []
    for entry in folder.names():
        if entry.endswith(".sock"):
            try:
                found.append((entry, _request(folder, entry, "status")))
            except Refused:
                found.append((entry, None))
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
    try:
        mine = digest(identity())
    except Unservable as exc:
        mine = None
        out(f"no worker can serve this command's calls: {exc}")
    running = False
    for entry, info in workers(folder):
        path = folder.display(entry)
        try:
            same = info is not None and info.get("digest") == mine
            if info is None:
                raise TypeError
            line = (f"{path}: pid {info['pid']}, up {info['uptime']:.0f} s, {info['calls']} "
                    f"calls, {info['running']} running, RSS {info['rss_kb'] / 1024:.0f} MB, "
                    f"idle exit after {info['idle']:.0f} s, ")
        except (KeyError, TypeError, ValueError):
            out(f"{path}: stale (no worker answers)")
            continue
        running = running or same
        out(line + ("used by this command" if same else "for another installation or "
                    "environment"))
    for entry in folder.names():
        if entry.endswith(".refused"):
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                             dir_fd=folder.fd)
                with open(fd, encoding="utf-8", errors="replace") as f:
                    text = f.read(4096).strip()
            except OSError:
                continue
            out(f"{folder.display(entry)}: no worker for this environment: {text}")
    if not running:
        out(f"no worker runs for this command (folder {folder.path})")
    return 0 if running else 1


def stop_all(folder: Folder, wait: float = 30.0) -> None:
    """Ask every worker in the folder to stop, wait until each is gone, remove its files
    (every name through the open folder: a folder swapped meanwhile is not touched)."""
    pids = []
    for entry, _ in workers(folder):
        with _suppress(Refused, KeyError, TypeError, ValueError):
            pids.append(int(_request(folder, entry, "stop")["pid"]))
        with _suppress(FileNotFoundError):
            os.unlink(entry, dir_fd=folder.fd)  # stale, or its worker stops
    deadline = time.monotonic() + wait
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            _kill(pid, signal.SIGKILL)
    for entry in folder.names():
        if entry.endswith((".refused", ".lock")):
            with _suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=folder.fd)


def _start_and_wait(out: Callable[[str], None]) -> int:
    folder = runtime_dir()
    ident = identity()
    name = digest(ident)
    start_worker(ident, folder)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            _request(folder, name + ".sock", "status")
            return 0
        except Refused:
            try:
                os.stat(name + ".refused", dir_fd=folder.fd, follow_symlinks=False)
                break
            except FileNotFoundError:
                time.sleep(0.05)
    out("Error: no worker started (see colorquant --worker-status)")
    return 1


def _stop(out: Callable[[str], None]) -> int:
    stop_all(runtime_dir())
    return 0


COMMANDS = {"--worker-status": _status, "--worker-start": _start_and_wait,
            "--worker-stop": _stop}


def _trace(text: str) -> None:
    path = os.environ.get(TRACE)
    if path:
        with open(path, "a", encoding="utf-8") as trace:
            trace.write(text + "\n")


def starts_worker(argv: Sequence[str]) -> bool:
    """Whether a call that ran in-process should start a worker: not for ``--help``,
    ``--version`` (they load nothing a worker would save), nor from a sandbox (namespaces
    other than those of process 1, where it can be seen): a tool that runs each call in a
    new sandbox would leave one worker per call that no later call could use."""
    for arg in argv:
        if arg == "--":
            break
        if arg in NO_WORK:
            return False
    with _suppress(OSError):
        for name in os.listdir("/proc/self/ns"):
            try:
                theirs = os.readlink(f"/proc/1/ns/{name}")
            except OSError:
                continue  # process 1 is not ours to look at (the usual case for a user)
            if os.readlink(f"/proc/self/ns/{name}") != theirs:
                return False
    return True


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``colorquant`` command: a warm worker runs the call if one answers, else this
    process does (and starts a worker just before it exits)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, value in THREAD_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if len(argv) == 1 and argv[0] in COMMANDS:
        try:
            sys.exit(COMMANDS[argv[0]](print))
        except Refused as exc:
            print(f"Error: no worker can be used: {exc}", file=sys.stderr)
            sys.exit(1)
    start: Callable[[int], None] | None = None
    if os.environ.get(SWITCH) == "0":
        _trace("local off")
    else:
        folder = None
        try:
            ident = identity()  # before the call imports anything (scikit-learn sets variables)
            folder = runtime_dir()
            code = serve(argv, ident, folder)
        except Unservable as exc:
            _trace(f"local {exc}")
        except Refused as exc:
            _trace(f"local {exc}")
            if starts_worker(argv):
                env = dict(os.environ)
                start = lambda code: _start_after(ident, env, code)  # noqa: E731
        except _Interrupted as exc:
            _interrupted(exc.signum)
        else:
            _trace("worker")
            _exit(code)
        finally:
            if folder is not None:
                folder.close()  # the in-process call has the descriptors it has without us
    from . import cli

    cli.main(argv, before_exit=start)


def _exit(code: int) -> NoReturn:
    """End the client of a served call: its streams flushed (it wrote nothing: the call's
    output went straight from the child), without the interpreter's teardown (2-3 ms)."""
    for stream in (sys.stdout, sys.stderr):
        with _suppress(Exception):
            stream.flush()
    os._exit(code)


def _start_after(ident: str, env: dict[str, str], code: int) -> None:
    """After an in-process call: start a worker for the next calls (never fails the call;
    not after a usage error, which did no work)."""
    if code == 2:
        return
    with _suppress(OSError, Refused):
        folder = runtime_dir()
        try:
            start_worker(ident, folder, env=env, background=True)
        finally:
            folder.close()
