"""Run the service: ``python -m service`` (settings from UPSCALER_* variables, see README.md).

One process serves by default on a CPU; with a GPU, several processes share
the port (``UPSCALER_PROCESSES``, see ``service.supervisor``). Either way
SIGTERM or SIGINT drains first (``service.server``) and the command exits 0.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.engine import available_cores, cuda_usable
from service.libc import tune_malloc
from service.server import configure_logging, serve
from service.settings import Settings, default_processes
from service.supervisor import Supervisor


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"invalid settings:\n{exc}")
    processes = settings.processes or default_processes(
        on_gpu=settings.device != "cpu" and cuda_usable(), cores=available_cores()
    )
    settings = settings.model_copy(update={"processes": processes})
    configure_logging(settings)
    if processes == 1:
        tune_malloc()
        sys.exit(serve(settings))
    sys.exit(Supervisor(settings).run())


if __name__ == "__main__":
    main()
