"""Locust load test: users post a mix of image sizes to /v1/upscale.

    locust -f client/locustfile.py --headless --host http://127.0.0.1:8000 \
        --users 8 --spawn-rate 8 --run-time 60s --csv loadtest-results/locust

Settings from the environment: UPSCALER_LOAD_SIZES (default 128,256,512), UPSCALER_LOAD_SCALE (default 2).
"""

from __future__ import annotations

import os

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

from client.loadtest import make_payloads

PAYLOADS = make_payloads([int(s) for s in os.environ.get("UPSCALER_LOAD_SIZES", "128,256,512").split(",")])
SCALE = os.environ.get("UPSCALER_LOAD_SCALE", "2")


class UpscaleUser(FastHttpUser):
    wait_time = between(0, 0.1)

    @task
    def upscale(self) -> None:
        payload = PAYLOADS[self.environment.runner.stats.num_requests % len(PAYLOADS)]
        self.client.post(
            f"/v1/upscale?scale={SCALE}",
            data=payload.data,
            headers={"Content-Type": payload.content_type},
            name=f"/v1/upscale {payload.width}px",
        )
