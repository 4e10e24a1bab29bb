"""Run the service: ``python -m service`` (settings from UPSCALER_* variables, see README.md).

On SIGTERM or SIGINT the service first drains: ``/readyz`` turns 503 while it
keeps serving for ``UPSCALER_DRAIN_SECONDS`` (so load balancers stop sending
work), then uvicorn stops accepting connections, finishes the requests in
flight and exits 0. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
import threading

import uvicorn
from pydantic import ValidationError

from service.app import ServiceState, create_app
from service.settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame) -> None:
        if self.state.draining:  # second signal: stop now
            return super().handle_exit(sig, frame)
        self.state.ready, self.state.draining = False, True
        delay = self.state.settings.drain_seconds
        log.info("draining: /readyz answers 503; stopping in %.1f s", delay)
        threading.Timer(delay, super().handle_exit, args=(sig, frame)).start()

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # uvicorn re-raises a captured signal once it has stopped, so the process would die of SIGTERM
            # (exit status -15) even after a clean drain; only a forced stop (a second signal) keeps that.
            if len(self._captured_signals) == 1:
                self._captured_signals.clear()


def _release_large_buffers_to_the_os() -> None:
    """Make glibc serve every buffer of 1 MiB or more with mmap, so freeing it returns the memory at once.

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
    image-sized buffers come from the heap and stay there: measured on a 4096x4096 x2 request, peak RSS growth
    fell from 1.59x to 1.38x the raw input + output with the threshold fixed.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; setting it also turns off the dynamic adjustment


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"invalid settings:\n{exc}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _release_large_buffers_to_the_os()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=60,
    )
    DrainingServer(config, app.state.service).run()


if __name__ == "__main__":
    main()
