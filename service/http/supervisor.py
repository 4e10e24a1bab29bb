"""Several server processes on one port (``UPSCALER_PROCESSES`` > 1).

One process decodes, encodes, cuts tiles and speaks HTTP under a single
interpreter lock, and uses at most about 2.3 cores doing so. With a GPU doing
the network in milliseconds, that lock is the limit, and several processes
serve several times as much (docs/performance.md, GPU).

The supervisor spawns the children (fresh interpreters: none inherits the
parent's threads or ONNX Runtime state). Each child builds the whole service
(engine, batcher, codec threads) for its share of the cores and listens on
the port with its own ``SO_REUSEPORT`` socket, so the kernel spreads new
connections over the children that are listening; each batches the tiles of
its own requests. (A single socket shared by all would let whichever child
wakes first accept a whole burst of connections: asyncio accepts every
waiting one at once.) The supervisor

- forwards SIGTERM and SIGINT to the children, each of which drains as a
  single server does (``service.http.server``), and exits 0 once all stopped
  cleanly;
- replaces a child that dies after it became ready (a crash, the OOM
  killer), at once the first time, then after a backoff of 1 s doubling to
  30 s while deaths keep coming within a minute;
- stops the others and exits 3 if a child exits before it became ready
  (models missing, no GPU with ``UPSCALER_DEVICE=cuda``, killed for memory
  while loading): a replacement would most likely fail the same way;
- keeps prometheus-client's multiprocess files in a temporary folder, so
  ``/metrics`` from any child counts the requests of all of them.

Children have their own process group, so a terminal's Ctrl-C reaches them
once, through the supervisor, and they are sent SIGTERM if it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from pathlib import Path

from prometheus_client import multiprocess

from service.host import die_with_parent, tune_malloc
from service.http.server import STARTUP_FAILURE, configure_logging, serve
from service.settings import Settings

__all__ = ["Child", "Supervisor", "bound_socket"]

log = logging.getLogger("service.http.supervisor")

_spawn = multiprocessing.get_context("spawn")
_POLL_S = 0.2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_MAX_BACKOFF_S = 30.0
_METRICS_PREFIX = "upscaler-metrics-"


@dataclass
class Child:
    process: multiprocessing.process.BaseProcess
    # 1 once the child's models are warmed up. A lock-free shared byte: a child killed while setting it cannot
    # leave the supervisor waiting on a lock.
    ready: ctypes.c_byte
    reaped: bool = False
    replaced: bool = False  # died while serving; another takes (or will take) its place


ChildTarget = Callable[[Settings, ctypes.c_byte], None]


class Supervisor:
    def __init__(self, settings: Settings, *, target: ChildTarget | None = None):
        """``target(settings, ready)`` runs in each child, which sets ``ready.value = 1`` once it serves: by default,
        a server."""
        self.settings = settings
        self.target = target or _serve
        self.children: list[Child] = []
        self._signals: list[int] = []
        self._stopping = False
        self._failed = False
        self._delay = 0.0  # before the next replacement; doubles while deaths keep coming
        self._last_death = -math.inf
        self._due: list[tuple[float, int]] = []  # (time, slot) of replacements waiting for their backoff

    def run(self) -> int:
        """Serve with ``settings.processes`` children until signalled; the exit status for the command."""
        s = self.settings
        try:
            # A plain bind first: SO_REUSEPORT alone would let a second service share a port already served.
            with bound_socket(s.host, s.port, reuse_port=False) as probe:
                port = probe.getsockname()[1]  # also picks one for port 0
            holder = bound_socket(s.host, port, reuse_port=True)  # holds the port; the children listen
        except OSError as exc:
            log.error("cannot bind %s port %d: %s", s.host, s.port, exc)
            return STARTUP_FAILURE
        self.settings = s = s.model_copy(update={"port": port})
        for sig in _STOP_SIGNALS:
            signal.signal(sig, lambda sig, frame: self._signals.append(sig))
        host = f"[{s.host}]" if ":" in s.host else s.host
        log.info("serving on http://%s:%d with %d processes", host, s.port, s.processes)  # signals are handled now
        with holder, _metrics_dir() as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the children inherit it
            self.children = [self._start() for _ in range(s.processes)]
            while not self._stopping or any(c.process.is_alive() for c in self.children):
                time.sleep(_POLL_S)
                self._reap(metrics_dir)  # first: a child that died on its own is not one stopped by a signal
                self._forward_signals()
                self._start_due()
        codes = [c.process.exitcode for c in self.children if not c.replaced]
        log.info("all server processes stopped (exit statuses %s)", codes)
        # A child stopped by the signal it was sent (it was still starting) stopped as asked.
        clean = all(code in (0, *(-sig for sig in _STOP_SIGNALS)) for code in codes)
        return STARTUP_FAILURE if self._failed else int(not clean)

    def _start(self) -> Child:
        ready = _spawn.RawValue(ctypes.c_byte, 0)
        args = (self.target, self.settings, os.getpid(), ready)
        process = _spawn.Process(target=_bootstrap, args=args, name="upscaler-server")
        # Blocked while it starts, so no signal kills the child before it has left the terminal's process group;
        # it unblocks them itself (the mask is inherited across exec). multiprocessing's resource tracker is
        # started first: starting it unblocks these signals again.
        resource_tracker.ensure_running()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return Child(process, ready)

    def _forward_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if not self._stopping:
                log.info("%s: stopping %d server processes", signal.Signals(sig).name, len(self.children))
            self._stopping = True
            self._signal_children(sig)

    def _signal_children(self, sig: int) -> None:
        for child in self.children:
            if child.process.is_alive():
                os.kill(child.process.pid, sig)

    def _reap(self, metrics_dir: str) -> None:
        """Account for children that exited: one that never became ready failed to start, and a replacement
        would fail the same way; one that died while serving is replaced, after a backoff if that keeps
        happening."""
        for slot, child in enumerate(self.children):
            if child.reaped or child.process.exitcode is None:
                continue
            child.reaped = True
            multiprocess.mark_process_dead(child.process.pid, metrics_dir)  # its gauges no longer count
            if self._stopping:
                continue
            code = child.process.exitcode
            if not child.ready.value:
                log.error("a server process failed to start (exit status %s); stopping the others", code)
                self._failed = self._stopping = True
                for _ in range(2):  # a second signal skips the drain
                    self._signal_children(signal.SIGTERM)
                continue
            child.replaced = True
            delay = self._backoff()
            log.error(
                "server process %d died (exit status %s); starting another in %.0f s", child.process.pid, code, delay
            )
            self._due.append((time.monotonic() + delay, slot))

    def _backoff(self) -> float:
        """0 s for a death after a quiet minute; then 1 s, doubling up to 30 s, while deaths keep coming."""
        now = time.monotonic()
        quiet = now - self._last_death > 60
        self._last_death = now
        self._delay = 0.0 if quiet else min(_MAX_BACKOFF_S, max(1.0, 2 * self._delay))
        return self._delay

    def _start_due(self) -> None:
        now = time.monotonic()
        for due in [d for d in self._due if d[0] <= now]:
            self._due.remove(due)
            if not self._stopping:
                self.children[due[1]] = self._start()


@contextlib.contextmanager
def _metrics_dir() -> Iterator[str]:
    """A fresh folder for prometheus-client's multiprocess files. The supervisor and each child hold a shared lock
    on its ``.lock``, and the folder only gets its findable name once locked; folders whose lock nobody holds were
    left by a supervisor that was killed, and are removed first."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{_METRICS_PREFIX}*"):
        with contextlib.suppress(OSError):
            fd = os.open(old / ".lock", os.O_RDWR)  # no lock file: not one of ours to judge
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a supervisor or child holds it
                shutil.rmtree(old, ignore_errors=True)
            finally:
                os.close(fd)
    staging = Path(tempfile.mkdtemp(prefix=f".{_METRICS_PREFIX}"))
    path = staging.with_name(staging.name[1:])
    try:
        with open(staging / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)  # shared, like the children's: only the clean-up takes it exclusively
            staging.rename(path)
            yield str(path)
    finally:
        shutil.rmtree(path if path.exists() else staging, ignore_errors=True)


def bound_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port, not yet listening; with ``reuse_port``, one of a group that share it.

    The address is the first ``getaddrinfo`` gives for a listening socket; IPv6 sockets are IPv6-only, as asyncio
    makes them for a single server.
    """
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = addresses[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: connections in TIME_WAIT do not block
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    return sock


def _bootstrap(target: ChildTarget, settings: Settings, parent: int, ready: ctypes.c_byte) -> None:
    """The start of every child: out of the terminal's process group (signals come through the supervisor), the
    signals blocked by the supervisor delivered again, with the default action until the server installs its own
    (a pending Ctrl-C ends it quietly rather than with a KeyboardInterrupt), the metrics lock shared, then
    ``target``."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    die_with_parent(parent)
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if shared:
        lock = os.open(Path(shared) / ".lock", os.O_RDONLY)  # held until this process ends
        fcntl.flock(lock, fcntl.LOCK_SH)
    target(settings, ready)


def _serve(settings: Settings, ready: ctypes.c_byte) -> None:
    """A server process."""
    configure_logging(settings)
    tune_malloc()
    sock = bound_socket(settings.host, settings.port, reuse_port=True)  # uvicorn makes it listen
    sys.exit(serve(settings, sock, on_ready=lambda: setattr(ready, "value", 1)))
