"""Threads that decode uploads, each upload within a time budget.

An upload's cost is bounded by structure where that is cheap (the pixel limits, the allowed formats, JPEG scans:
``service.imageio.decoding``), and by time everywhere: no upload may keep a decoder longer than ``budget_s``. A
decode that overruns is answered at once (422, ``TooCostly``) and its thread is abandoned: Python cannot stop a
thread inside a C decoder, so the thread finishes in the background, no longer counted against the uploads waiting,
and is counted as abandoned until it does. While ``max_abandoned`` threads are still busy that way, new uploads are
turned away (503) instead of piling more of them up.

At most ``slots`` uploads decode at once; an upload waits for a slot in arrival order. Each upload takes one slot,
so two hostile uploads hold at most two slots for at most ``budget_s`` each, and the default leaves more slots than
that (``Settings``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.errors import Overloaded, TooCostly

__all__ = ["DecoderPool"]

T = TypeVar("T")


class DecoderPool:
    def __init__(
        self,
        slots: int,
        budget_s: float,
        max_abandoned: int,
        initializer: Callable[[], object] | None = None,
    ):
        # One thread per slot, plus one for each abandoned decode: a decode that gets a slot always finds a thread.
        self._threads = ThreadPoolExecutor(
            slots + max_abandoned, thread_name_prefix="codec_decode", initializer=initializer
        )
        self._slots = asyncio.Semaphore(slots)
        self.budget_s, self.max_abandoned = budget_s, max_abandoned
        self._abandoned = 0  # counted on the event loop only: the futures' callbacks run there too

    @property
    def abandoned(self) -> int:
        """Decodes past their budget that are still running."""
        return self._abandoned

    async def run(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` on a decoder thread; TooCostly past the budget, Overloaded while too many earlier
        decodes are still running past theirs."""
        self._refuse_while_overrun()
        async with self._slots:
            # Again, with the slot: uploads that waited for it must not start past the cap either. Nothing awaits
            # between this check and the submit, so a decode that starts always finds a thread.
            self._refuse_while_overrun()
            future = asyncio.get_running_loop().run_in_executor(self._threads, lambda: fn(*args, **kwargs))
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.budget_s)
            except asyncio.CancelledError:  # the request went away (or the server stops): the thread runs on
                self._abandon(future)
                raise
            except TimeoutError:
                self._abandon(future)
                raise TooCostly(
                    f"decoding the image took longer than {self.budget_s:g} s, the most this server spends on one "
                    "upload; send a smaller or simpler image"
                ) from None

    def _refuse_while_overrun(self) -> None:
        if self._abandoned >= self.max_abandoned:
            raise Overloaded("the decoders are busy with uploads that overran their time budget; retry shortly")

    def _abandon(self, future: asyncio.Future) -> None:
        if future.done():
            return
        self._abandoned += 1
        future.add_done_callback(self._finished)

    def _finished(self, future: asyncio.Future) -> None:
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it: the request was answered already
        self._abandoned -= 1

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
