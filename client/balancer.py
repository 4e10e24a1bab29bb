"""Client-side load balancing over several replicas of the service.

Each request goes to the replica in rotation with the fewest requests in flight
(ties taken in turn). A replica that fails (no connection, a timeout, a 5xx
gateway or overload answer) leaves the rotation and rests: for its
``Retry-After`` when it sent one, else for a time that doubles with each
failure in a row, up to ``max_rest``. When the rest is over, a single request
probes it: success puts it back in rotation, failure makes it rest again. While
every replica rests, ``acquire`` waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Balancer", "Lease"]

log = logging.getLogger("client.balancer")


@dataclass(eq=False)
class _Replica:
    url: str
    inflight: int = 0
    failures: int = 0  # in a row
    resting_until: float | None = None  # monotonic time; None while in rotation
    probing: bool = False


@dataclass(frozen=True, eq=False)
class Lease:
    """The right to send one request to ``url``; hand it back with ``Balancer.release``."""

    url: str
    replica: _Replica
    probe: bool


class Balancer:
    def __init__(self, urls: Sequence[str], *, base_rest: float = 0.5, max_rest: float = 10.0):
        if not urls:
            raise ValueError("at least one server URL is needed")
        self._replicas = [_Replica(url.rstrip("/")) for url in urls]
        self._base_rest, self._max_rest = base_rest, max_rest
        self._turn = 0
        self._changed = asyncio.Event()

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self._replicas]

    async def acquire(self) -> Lease:
        """A replica to send one request to; waits while every replica rests or is being probed."""
        while True:
            lease = self._pick(time.monotonic())
            if lease is not None:
                lease.replica.inflight += 1
                return lease
            changed = self._changed
            ends = [r.resting_until for r in self._replicas if r.resting_until is not None and not r.probing]
            timeout = max(0.0, min(ends) - time.monotonic()) if ends else None
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except TimeoutError:
                pass

    def release(self, lease: Lease, *, failed: bool = False, retry_after: float | None = None) -> None:
        """Hand a lease back, saying whether its replica failed (and how long it asked to be left alone)."""
        r = lease.replica
        r.inflight -= 1
        if not failed:
            if r.resting_until is not None:
                log.info("%s answers again; back in rotation", r.url)
            r.failures, r.resting_until, r.probing = 0, None, False
        elif lease.probe or r.resting_until is None:
            # A request sent before the replica left the rotation does not lengthen its rest.
            r.failures += 1
            if retry_after is None:
                rest = min(self._max_rest, self._base_rest * 2 ** min(r.failures - 1, 30))
            else:
                rest = retry_after
            r.resting_until, r.probing = time.monotonic() + rest, False
            log.info("%s out of rotation for %.1f s (%d failure(s) in a row)", r.url, rest, r.failures)
        self._changed.set()
        self._changed = asyncio.Event()

    def _pick(self, now: float) -> Lease | None:
        for r in self._replicas:
            if r.resting_until is not None and r.resting_until <= now and not r.probing:
                r.probing = True
                return Lease(r.url, r, probe=True)
        n = len(self._replicas)
        order = [self._replicas[(self._turn + i) % n] for i in range(n)]
        ready = [r for r in order if r.resting_until is None]
        if not ready:
            return None
        best = min(ready, key=lambda r: r.inflight)  # min() keeps the first of equals: the next in turn
        self._turn = (self._replicas.index(best) + 1) % n
        return Lease(best.url, best, probe=False)
