"""Child targets for ``Supervisor(target=...)`` in tests/test_supervisor.py (importable by spawned children)."""

import os
import signal
import sys
import time


def exit_before_ready(settings, parent: int, ready) -> None:
    """A child that fails before it is ready, with a status other than uvicorn's 3 (an import error, say)."""
    sys.exit(1)


def ready_then_exit(settings, parent: int, ready) -> None:
    """A child that serves for a moment, then crashes."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    ready.set()
    time.sleep(0.3)
    os._exit(1)


def supervise(target: str, seconds: float) -> None:
    """Run a supervisor of two ``target`` children for ``seconds`` (or until it ends), then SIGTERM it."""
    import threading

    import tests.supervisor_targets as targets
    from service.settings import Settings
    from service.supervisor import Supervisor

    threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
    sys.exit(Supervisor(Settings(port=0, processes=2), target=getattr(targets, target)).run())


if __name__ == "__main__":
    supervise(sys.argv[1], float(sys.argv[2]))
