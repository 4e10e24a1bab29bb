"""Several server processes on one port (``UPSCALER_PROCESSES`` > 1).

One process decodes, encodes, cuts tiles and speaks HTTP under a single
interpreter lock, and uses at most about 2.3 cores doing so. With a GPU doing
the network in milliseconds, that lock is the limit: on a 16-core H200
machine one process served 35 output MPix/s and four 137 in the same run
(bench/results/service-cuda-p1.json, service-cuda-shared-socket.json).

The supervisor spawns the children (fresh interpreters: none inherits the
parent's threads or ONNX Runtime state). Each child builds the whole service
(engine, batcher, codec threads) for its share of the cores and listens on
the port with its own ``SO_REUSEPORT`` socket, so the kernel spreads new
connections over the children that are listening; each batches the tiles of
its own requests. (A single socket shared by all would let whichever child
wakes first accept a whole burst of connections: asyncio accepts every
waiting one at once.) The supervisor

- forwards SIGTERM and SIGINT to the children, each of which drains as a
  single server does (``service.server``), and exits 0 once all stopped
  cleanly;
- replaces a child that dies while serving (a crash, the OOM killer);
- stops the others and exits 3 if a child fails to start (models missing,
  no GPU with ``UPSCALER_DEVICE=cuda``): a replacement would fail the same way;
- keeps prometheus-client's multiprocess files, so ``/metrics`` from any child
  counts the requests of all of them.

Children have their own process group, so a terminal's Ctrl-C reaches them
once, through the supervisor, and they are sent SIGTERM if it dies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time

from prometheus_client import multiprocess

from service.server import STARTUP_FAILURE, configure_logging, release_large_buffers_to_the_os, serve
from service.settings import Settings

__all__ = ["Supervisor", "bound_socket"]

log = logging.getLogger("service.supervisor")

_spawn = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.2


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.children: list[multiprocessing.process.BaseProcess] = []
        self._signals: list[int] = []
        self._reaped: set[int] = set()
        self._stopping = False
        self._failed = False

    def run(self) -> int:
        """Serve with ``settings.processes`` children until signalled; the exit status for the command."""
        s = self.settings
        try:
            # A plain bind first: SO_REUSEPORT alone would let a second service share a port already served.
            with bound_socket(s.host, s.port, reuse_port=False) as probe:
                port = probe.getsockname()[1]  # also picks one for port 0
            holder = bound_socket(s.host, port, reuse_port=True)  # holds the port; the children listen
        except OSError as exc:
            log.error("cannot bind %s:%d: %s", s.host, s.port, exc)
            return STARTUP_FAILURE
        self.settings = s = s.model_copy(update={"port": port})
        log.info("serving on http://%s:%d with %d processes", s.host, s.port, s.processes)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda sig, frame: self._signals.append(sig))
        with holder, tempfile.TemporaryDirectory(prefix="upscaler-metrics-") as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the children inherit it
            self.children = [self._start() for _ in range(s.processes)]
            while any(child.is_alive() for child in self.children):
                time.sleep(_POLL_S)
                self._forward_signals()
                self._reap(metrics_dir)
        codes = [child.exitcode for child in self.children]
        log.info("all server processes stopped (exit statuses %s)", codes)
        return STARTUP_FAILURE if self._failed else int(any(codes))

    def _start(self) -> multiprocessing.process.BaseProcess:
        child = _spawn.Process(target=_child, args=(self.settings, os.getpid()), name="upscaler-server")
        child.start()
        return child

    def _forward_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if not self._stopping:
                log.info("%s: stopping %d server processes", signal.Signals(sig).name, len(self.children))
            self._stopping = True
            self._signal_children(sig)

    def _signal_children(self, sig: int) -> None:
        for child in self.children:
            if child.is_alive():
                os.kill(child.pid, sig)

    def _reap(self, metrics_dir: str) -> None:
        """Account for children that exited: replace one that died while serving, give up on one that failed
        to start."""
        for i, child in enumerate(self.children):
            if child.exitcode is None or child.pid in self._reaped:
                continue
            self._reaped.add(child.pid)
            multiprocess.mark_process_dead(child.pid, metrics_dir)  # its gauges no longer count
            if self._stopping:
                continue
            if child.exitcode == STARTUP_FAILURE:  # its log says why
                log.error("a server process failed to start; stopping the others")
                self._failed = self._stopping = True
                for _ in range(2):  # a second signal skips the drain
                    self._signal_children(signal.SIGTERM)
                continue
            log.error("server process %d died (exit status %s); starting another", child.pid, child.exitcode)
            self.children[i] = self._start()


def bound_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port, not yet listening; with ``reuse_port``, one of a group that share it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: connections in TIME_WAIT do not block
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _child(settings: Settings, parent: int) -> None:
    """One server process of the supervisor's."""
    os.setpgid(0, 0)  # out of the terminal's process group: signals come through the supervisor
    _die_with_parent(parent)
    configure_logging(settings)
    release_large_buffers_to_the_os()
    sys.exit(serve(settings, bound_socket(settings.host, settings.port, reuse_port=True)))  # uvicorn listens


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so no orphan keeps serving the port."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
