"""Container health check: exit 0 when the service on this container answers 200 on /readyz, else 1.

Python's standard library only, so the image needs no curl. Reads the port the service was given.
"""

import os
import sys
import urllib.request

port = os.environ.get("UPSCALER_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:  # connection refused, timeout, or HTTPError (503 while starting or draining)
    print(f"not ready: {exc}", file=sys.stderr)
    sys.exit(1)
