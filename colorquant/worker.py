"""The warm worker: numpy, Pillow, scikit-learn, numba and colorquant loaded once, a child per call.

Started by the launcher (``launch.py``) in its own session with no inherited descriptors,
it listens on a Unix socket named after the identity of the installation and environment
(``launch.identity``) and holds a lock for its whole life, so one runs per identity. For
each call it forks a child that takes the caller's descriptors, folder, environment, umask
and signal dispositions and runs ``cli.main``, exactly as an in-process call does. The
worker is single-threaded (a selector loop), so forking is safe; it exits after
``COLORQUANT_WORKER_IDLE`` seconds (default 600) without calls.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import warnings
from typing import Any

from . import launch

#: Modules a call imports, loaded once here (matplotlib is left out: only --plot needs it).
PRELOAD = ("numpy", "PIL.Image", "threadpoolctl", "sklearn.cluster", "colorquant.cli",
           "colorquant.files", "colorquant.batch", "colorquant.fit", "colorquant.imagefile",
           "colorquant.palettefile", "colorquant.frames")
#: Seconds a client has to send its request and its "go" (more than it waits for "ready").
HANDSHAKE = 10.0
DEFAULT_IDLE = 600.0
#: Environment variables the preloaded imports set (see :func:`main`).
_ADDED: dict[str, str] = {}


def _preload() -> str | None:
    """Import what calls use; the reason this process must not serve calls, or None."""
    import importlib

    with warnings.catch_warnings(record=True) as caught:
        for name in PRELOAD:
            importlib.import_module(name)
        from PIL import Image

        from . import ditherkernel, fit

        Image.init()  # the plugins, as the first Image.open of a call would load them
        fit.load_kernel()  # numba and the compiled loops, loaded once for every child
        ditherkernel.warm()
    if caught:
        # a fresh process would print these when a call imports the module: we cannot
        return f"importing printed a warning: {caught[0].message}"
    return None


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Worker:
    """The accept loop, its running children and their connections."""

    def __init__(self, folder: str, name: str, ident: str, lock: int, idle: float) -> None:
        self.folder, self.name, self.ident, self.lock, self.idle = folder, name, ident, lock, idle
        self.path = os.path.join(folder, name + ".sock")
        self.started = time.time()
        self.calls = 0
        self.children: dict[int, socket.socket] = {}
        self.pending: set[_Pending] = set()
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def bind(self) -> None:
        """Listen on a temporary name, then rename it over the socket (stale or not)."""
        tmp = os.path.join(self.folder, f".{self.name}.{os.getpid()}.tmp")
        self.listener.bind(tmp)
        self.listener.listen(64)
        os.rename(tmp, self.path)
        self.inode = os.stat(self.path).st_ino
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def loop(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        last = time.monotonic()
        while True:
            self._reap()
            if self.children:
                last = time.monotonic()
            elif self.stopping or time.monotonic() - last >= self.idle:
                break
            timeout = None if self.children else max(0.0, last + self.idle - time.monotonic())
            handshake = self._expire()
            if handshake is not None:
                timeout = handshake if timeout is None else min(timeout, handshake)
            for key, _ in self.selector.select(timeout):
                if key.fileobj is self.listener:
                    self._accept()
                    last = time.monotonic()
                elif key.fileobj == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif isinstance(key.data, _Pending):
                    self._advance(key.data)
                else:
                    self._client_event(key.fileobj, key.data)
        self._unlink()

    def stop(self) -> None:
        """Take no more calls; the loop ends when the running ones have."""
        if not self.stopping:
            self.stopping = True
            self._unlink()
            self.selector.unregister(self.listener)
            self.listener.close()

    def _unlink(self) -> None:
        try:
            if os.stat(self.path).st_ino == self.inode:  # still ours, not a newer worker's
                os.unlink(self.path)
        except OSError:
            pass

    def _accept(self) -> None:
        """Take every waiting connection; its handshake goes on in the loop (never blocks)."""
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                if launch.peer_uid(conn) != os.getuid():
                    raise ValueError("another user")
                conn.setblocking(False)
                conn.send(b"A\n")  # accepted: this worker is alive, the client may wait longer
            except (OSError, ValueError):
                conn.close()
                continue
            pending = _Pending(conn, time.monotonic() + HANDSHAKE)
            self.pending.add(pending)
            self.selector.register(conn, selectors.EVENT_READ, pending)

    def _drop(self, pending: _Pending) -> None:
        self.pending.discard(pending)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(pending.conn)
        pending.close()

    def _expire(self) -> float | None:
        """Drop handshakes past their deadline; seconds until the next deadline."""
        now = time.monotonic()
        for pending in [p for p in self.pending if p.deadline <= now]:
            self._drop(pending)
        return min((p.deadline - now for p in self.pending), default=None)

    def _advance(self, pending: _Pending) -> None:
        """Read what the client sent in its handshake and act on it once it is complete."""
        try:
            if pending.request is None:
                if not pending.read():
                    return
                if self._answer(pending):
                    return
            else:
                go = pending.conn.recv(2)
                if go == b"G\n":
                    self._drop_keep(pending)
                    self._run(pending.conn, pending.request, pending.fds)
                    pending.fds = []
                    return
                # else the client gave up (timed out) and runs in-process
        except BlockingIOError:
            return
        except (OSError, ValueError, KeyError):
            pass
        self._drop(pending)

    def _drop_keep(self, pending: _Pending) -> None:
        """End the handshake but keep its connection and descriptors (the call starts)."""
        self.pending.discard(pending)
        self.selector.unregister(pending.conn)

    def _answer(self, pending: _Pending) -> bool:
        """Reply to a complete request; whether the connection stays (a call waits for go)."""
        request, conn = pending.request or {}, pending.conn
        op = request.get("op")
        conn.setblocking(True)
        conn.settimeout(HANDSHAKE)
        if op == "status":
            launch.send_message(conn, {"pid": os.getpid(), "uptime": time.time() - self.started,
                                       "calls": self.calls, "running": len(self.children),
                                       "rss_kb": _rss_kb(), "digest": self.name,
                                       "idle": self.idle})
        elif op == "stop":
            launch.send_message(conn, {"pid": os.getpid()})
            self.stop()
        elif op == "run" and request.get("identity") == self.ident and len(pending.fds) == 4:
            conn.sendall(b"R\n")
            conn.setblocking(False)
            return True
        return False

    def _run(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        pid = -1
        try:
            try:
                pid = os.fork()
            except OSError:
                conn.setblocking(True)
                conn.sendall(b"F\n")
                conn.close()
                return
            if pid == 0:
                code = 1
                try:
                    self._close_in_child(conn)
                    code = _child(conn, request, fds)
                finally:
                    os._exit(code)
        finally:
            if pid != 0:
                for fd in fds:
                    os.close(fd)
        self.calls += 1
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)

    def _close_in_child(self, conn: socket.socket) -> None:
        signal.set_wakeup_fd(-1)
        for fd in (self.wake_r, self.wake_w, self.lock):
            os.close(fd)
        self.selector.close()
        if not self.stopping:
            self.listener.close()
        for other in self.children.values():
            other.close()
        for pending in self.pending:
            pending.close()

    def _client_event(self, conn: Any, pid: int) -> None:
        """Readable while a call runs: the client closed (killed?): stop its child."""
        try:
            data = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(conn)
            if pid in self.children:
                launch._kill(pid, signal.SIGTERM)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                message = b"K%d\n" % os.WTERMSIG(status)
            else:
                message = b"X%d\n" % os.waitstatus_to_exitcode(status)
            try:
                conn.setblocking(True)
                conn.settimeout(0.5)
                conn.sendall(message)  # the child sent its code itself, unless killed
            except OSError:
                pass
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            conn.close()


class _Pending:
    """A connection in its handshake: the request (with descriptors) as it arrives."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn, self.deadline = conn, deadline
        self.data = b""
        self.fds: list[int] = []
        self.request: dict[str, Any] | None = None

    def read(self) -> bool:
        """Read what has arrived; whether the request is complete (ValueError: truncated)."""
        if not self.fds and not self.data:
            chunk, fds, _, _ = socket.recv_fds(self.conn, 1 << 16, 4)
            self.fds = list(fds)
        else:
            chunk = self.conn.recv(1 << 16)
        if not chunk:
            raise ValueError("truncated request")
        self.data += chunk
        if len(self.data) < 4 or len(self.data) < 4 + struct.unpack("!I", self.data[:4])[0]:
            return False
        self.request = json.loads(self.data[4:])
        return True

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.conn.close()


# --- the child ----------------------------------------------------------------------------


def _streams() -> None:
    """Standard streams over descriptors 0-2 as a fresh interpreter would make them.

    The encoding and error handlers are this process's (the locale and PYTHONIOENCODING are
    part of the identity); line buffering when the descriptor is a terminal (always for
    stderr); no buffering with PYTHONUNBUFFERED or -u.
    """
    unbuffered = bool(sys.__stdout__.write_through)  # this process was started the same way
    made = []
    for fd, name, old in ((0, "<stdin>", sys.__stdin__), (1, "<stdout>", sys.__stdout__),
                          (2, "<stderr>", sys.__stderr__)):
        reading = fd == 0
        buffering = 0 if unbuffered and not reading else -1
        buffer = open(fd, "rb" if reading else "wb", buffering, closefd=False)  # noqa: SIM115
        raw = buffer if buffering == 0 else buffer.raw
        raw.name = name
        interactive = os.isatty(fd)
        text = io.TextIOWrapper(buffer, encoding=old.encoding, errors=old.errors, newline="\n",
                                line_buffering=not unbuffered and (interactive or fd == 2),
                                write_through=unbuffered and not reading)
        made.append(text)
    sys.stdin = sys.__stdin__ = made[0]
    sys.stdout = sys.__stdout__ = made[1]
    sys.stderr = sys.__stderr__ = made[2]


def _signals(request: dict[str, Any]) -> None:
    """The caller's signal dispositions (what a fresh process would start with); the
    forwarded signals stay blocked until the call starts (:func:`_child`)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [getattr(signal, n) for n in launch.FORWARDED])
    wanted = request.get("signals", {})
    for num in signal.valid_signals():
        if num in (signal.SIGKILL, signal.SIGSTOP):
            continue
        how = wanted.get(str(int(num)))
        handler = {"ign": signal.SIG_IGN, "int": signal.default_int_handler}.get(
            how, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(num, handler)


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> int:
    """Become the caller's process and run its call; sends ``P<pid>``, then ``X<code>``."""
    _signals(request)
    conn.setblocking(True)
    conn.sendall(b"P%d\n" % os.getpid())  # the client forwards signals from now on
    stdin, stdout, stderr, cwd = fds
    os.fchdir(cwd)
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    for key, value in _ADDED.items():
        os.environ.setdefault(key, value)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    _streams()
    sys.argv = [request["argv0"], *request["argv"]]
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # a fresh process has fresh global numpy state
    from . import cli

    # a signal that came during the set-up acts now, as on a fresh process at this point
    signal.pthread_sigmask(signal.SIG_SETMASK, request.get("mask", []))

    def report(code: int) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"X%d\n" % code)

    cli.main(request["argv"], before_exit=report)
    return 1  # not reached: main exits


def main() -> None:
    """``python -c launch.BOOT colorquant.worker FOLDER``: preload, listen, serve, exit idle."""
    folder = sys.argv[-1]
    lock = int(os.environ.pop("COLORQUANT_WORKER_LOCK"))
    expected = os.environ.pop("COLORQUANT_WORKER_ID")
    idle = float(os.environ.get(launch.IDLE) or DEFAULT_IDLE)
    ident = launch.identity()  # as the client computed it: before the imports
    name = launch.digest(ident)
    before = dict(os.environ)
    problem = _preload()
    # variables the imports set (scikit-learn: KMP_DUPLICATE_LIB_OK, KMP_INIT_AT_FORK); a
    # child sets them as the same imports in a fresh process would
    global _ADDED
    _ADDED = {k: v for k, v in os.environ.items() if before.get(k) != v}
    if problem is None and name != expected:
        problem = "the worker's identity differs from its caller's"
    if problem is not None:
        with open(os.path.join(folder, expected + ".refused"), "w", encoding="utf-8") as f:
            f.write(problem + "\n")
        return
    worker = Worker(folder, name, ident, lock, idle)
    worker.bind()
    worker.loop()
