"""Child targets for ``Supervisor(target=...)`` in tests/test_supervisor.py (importable by spawned children)."""

import os
import signal
import sys
import time


def exit_before_ready(settings, ready) -> None:
    """A child that fails before it is ready, with a status other than uvicorn's 3 (an import error, say)."""
    sys.exit(1)


def ready_then_exit(settings, ready) -> None:
    """A child that serves for a moment, then crashes."""
    ready.value = 1
    time.sleep(0.3)
    os._exit(1)


def ready_and_wait(settings, ready) -> None:
    """A child that serves until it is stopped, with no signal handler of its own."""
    ready.value = 1
    time.sleep(60)


def supervise(target: str, seconds: float) -> None:
    """Run a supervisor of two ``target`` children for ``seconds`` (or until it ends), then SIGTERM it."""
    import logging
    import threading

    import tests.http.supervisor_targets as targets
    from service.http.supervisor import Supervisor
    from service.settings import Settings

    logging.basicConfig(level="INFO", format="%(name)s %(message)s")  # the tests read the supervisor's log
    stop = threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGTERM))
    stop.daemon = True  # the supervisor may end first
    stop.start()
    sys.exit(Supervisor(Settings(port=0, processes=2), target=getattr(targets, target)).run())


if __name__ == "__main__":
    supervise(sys.argv[1], float(sys.argv[2]))
