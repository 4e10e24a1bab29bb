"""Run the service: ``python -m service`` (settings from UPSCALER_* variables, see README.md).

One process serves by default on a CPU; with a GPU, several processes share
the port (``UPSCALER_PROCESSES``, see ``service.http.supervisor``). Either way
SIGTERM or SIGINT drains first (``service.http.server``) and the command exits 0.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.host import available_cores, cuda_usable, tune_malloc
from service.http.server import configure_logging, serve
from service.http.supervisor import Supervisor
from service.settings import Settings, default_processes


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
