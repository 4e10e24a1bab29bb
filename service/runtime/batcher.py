"""Dynamic batching of tiles across requests.

Each request becomes a :class:`Job`: its mirror-padded image, the grid of
fixed-shape tiles to run, and an output array the results are written into.
One scheduler task forms batches of up to ``max_batch`` tiles of one model,
waiting at most ``max_wait`` for a batch to fill, so images of any size share
batches; while engine workers are idle, a batch takes no more than each one's
share of the waiting tiles, so that one small image is still spread over all.

Which tiles the next batch runs is a matter of turns (``scheduling="fair"``,
the default): the waiting jobs, whatever their model, scale or size, take turns
in one rotation. The job whose turn it is names the batch's model and gives its
tiles first; if it has fewer than a batch, that model's next jobs in the
rotation fill the rest. Then the job whose turn it was goes to the back. So a
request waits for at most one batch per request ahead of it in the rotation,
plus the batches already formed, before each batch of its own: never for the
whole of a huge image, whichever model either runs, and a request of at most
one batch of tiles is done after its first turn. ``scheduling="by-model"`` is
the older rule, kept to measure against: the next batch runs the model of the
oldest waiting job, one tile per job of that model per round, so a big job
keeps its model chosen until all its tiles are taken.

Tiles are cut (and converted to float) only when their batch is formed, and
results are written straight into the job's integer output, so memory stays
bounded by a few batches, not by the images.

A batch goes through three steps: cut (tiles to a float batch), run (the
network, in ``engine.workers`` engine threads: one per core on a CPU, one on
a GPU) and place (results to integer pixels in the job's output). Where the
model makes the output pixels itself (8-bit, from the _cpu graphs or the native
kernels), cutting and placing are plain copies and the engine thread does all
three. Otherwise (float results, as on a GPU) cutting and placing run in their
own small thread pool, and up to ``depth`` batches are between cut and place at once,
so the engine runs batch N while N+1 is cut and N-1 placed: on a GPU the
network takes a few milliseconds per batch and would otherwise wait for the
CPU steps. Each step hands the next to its pool itself, so the event loop
wakes once per batch, not once per step (each wake-up from a pool thread
costs the loop CPU that the codecs share). The event loop keeps accepting,
decoding and encoding throughout. Jobs whose deadline passed or whose request
was abandoned are dropped from the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from service.errors import DeadlineExceeded, Overloaded
from service.host import name_os_thread
from service.model_files import ModelKey
from service.runtime.engine import Engine, to_pixels
from service.runtime.tiling import TileGrid

__all__ = ["Job", "Batcher", "SCHEDULING"]

log = logging.getLogger("service.runtime.batcher")

T = TypeVar("T")

SCHEDULING = ("fair", "by-model")  # how the next batch's model is chosen (the module's docstring)


@dataclass(eq=False)
class Job:
    key: ModelKey
    grid: TileGrid
    padded: np.ndarray | None  # (H + 2c, W + 2c, 3) uint8/uint16 (or float32 in [0, 1]); None when done
    out: np.ndarray  # (sH, sW, 3), same dtype as the input
    deadline: float  # time.monotonic() after which the job is abandoned
    future: asyncio.Future
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None  # when the first tile entered a batch
    finished: float | None = None
    todo: deque[int] = field(default_factory=deque)  # tile indices not yet batched
    running: int = 0  # tiles in the batch being executed

    @property
    def pixel_scale(self) -> float:
        """What the input's pixels are multiplied by to make the network's [0, 1] floats."""
        return 1.0 if self.padded.dtype == np.float32 else 1.0 / np.iinfo(self.padded.dtype).max

    @property
    def dead(self) -> bool:
        return self.future.done()

    def timings(self) -> dict[str, float]:
        """Seconds spent waiting for the first batch and from then until the last tile was done."""
        started = self.started or self.submitted
        return {"queue": started - self.submitted, "infer": (self.finished or started) - started}


class Batcher:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 8,
        max_wait: float = 0.002,
        max_queue_tiles: int = 4096,
        depth: int | None = None,
        tile_threads: int = 2,
        scheduling: str = "fair",
        on_batch: Callable[[ModelKey, int, float], None] | None = None,
    ):
        if scheduling not in SCHEDULING:
            raise ValueError(f"scheduling must be one of {SCHEDULING}, not {scheduling!r}")
        self.engine = engine
        self.max_batch, self.max_wait, self.max_queue_tiles = max_batch, max_wait, max_queue_tiles
        self.scheduling = scheduling
        self.on_batch = on_batch  # metrics hook: (model, batch size, seconds)
        self._jobs: list[Job] = []  # every job not yet done, in arrival order
        # Jobs with tiles to batch, in the order of their next turn (by-model: never turned, so in arrival order).
        self._turns: deque[Job] = deque()
        self._queued = 0  # tiles not yet batched, over all jobs
        self._wake = asyncio.Event()
        # Batches between cut and place: by default, one running per engine worker plus two being cut or placed
        # (or, where the engine thread cuts and places, two formed and waiting for an engine thread, so that none
        # waits for the event loop to form its next batch).
        self._slots = asyncio.Semaphore(depth or engine.workers + 2)
        self._engine_pool = ThreadPoolExecutor(engine.workers, thread_name_prefix="engine", initializer=name_os_thread)
        self._tile_pool = ThreadPoolExecutor(tile_threads, thread_name_prefix="tiles", initializer=name_os_thread)
        self._task: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()

    @property
    def queued_tiles(self) -> int:
        return self._queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        tasks = [task for task in (self._task, *self._batches) if task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._engine_pool.shutdown(wait=True)
        self._tile_pool.shutdown(wait=True)

    def submit(self, key: ModelKey, image: np.ndarray, timeout: float) -> Job:
        """Queue an (H, W, 3) image for ``key``; raises Overloaded if the queue cannot take it."""
        grid = self.engine.grid(key, image.shape[0], image.shape[1])
        if self._queued and self._queued + len(grid) > self.max_queue_tiles:
            raise Overloaded(f"the server is busy ({self._queued} tiles queued); retry shortly")
        s = grid.scale
        job = Job(
            key=key,
            grid=grid,
            padded=grid.pad(image),
            deadline=time.monotonic() + timeout,
            out=np.empty((image.shape[0] * s, image.shape[1] * s, 3), image.dtype),
            future=asyncio.get_running_loop().create_future(),
            todo=deque(range(len(grid))),
        )
        self._jobs.append(job)
        self._turns.append(job)
        self._queued += len(grid)
        self._wake.set()
        return job

    async def upscale(self, key: ModelKey, image: np.ndarray, timeout: float) -> Job:
        """Submit and wait; the job's ``out`` holds the result. Cancelling this drops the job's tiles."""
        job = self.submit(key, image, timeout)
        del image  # the job holds its padded copy; let the caller's pixels be freed
        try:
            await job.future
        finally:
            if not job.future.done():
                job.future.cancel()
            self._forget(job)
        return job

    def _forget(self, job: Job) -> None:
        self._queued -= len(job.todo)
        job.todo.clear()
        if job in self._jobs:
            self._jobs.remove(job)
        if job in self._turns:
            self._turns.remove(job)

    def _expire(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs):
            if not job.dead and now > job.deadline:
                job.future.set_exception(
                    DeadlineExceeded(
                        "the request waited longer than its deadline; the server is overloaded, retry later"
                    )
                )
            if job.dead and not job.running:
                self._forget(job)

    def _next_key(self) -> ModelKey | None:
        """The model of the next batch: that of the job whose turn it is (by-model: the oldest waiting job)."""
        while self._turns and (self._turns[0].dead or not self._turns[0].todo):
            self._turns.popleft()  # finished cutting or abandoned: it has no more turns
        return self._turns[0].key if self._turns else None

    def _take(self, key: ModelKey) -> list[tuple[Job, int]]:
        """Tiles of ``key`` for one batch: up to max_batch, and while engine workers are idle no more than each
        one's share of the waiting tiles, so that a small image alone still keeps every worker busy.

        Fair: the job whose turn it is gives its tiles first, then the model's next jobs in turn order fill the
        batch; the job whose turn it was goes to the back of the rotation (a job that only filled keeps its place),
        and a job with no tiles left leaves it. By model: one tile per job per round, oldest job first."""
        jobs = [j for j in self._turns if j.key == key and j.todo and not j.dead]
        fair = self.scheduling == "fair"
        idle = self._idle_workers()
        size = self.max_batch if idle <= 0 else min(self.max_batch, -(-sum(len(j.todo) for j in jobs) // idle))
        picks: list[tuple[Job, int]] = []
        for job in itertools.islice(_in_turn_order(jobs) if fair else _one_per_job_per_round(jobs), size):
            picks.append((job, job.todo.popleft()))
            job.running += 1
            self._queued -= 1
        if fair and jobs:
            self._turns.remove(jobs[0])
            if jobs[0].todo:
                self._turns.append(jobs[0])
        return picks

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await self._slots.acquire()
            key, picks = await self._form_batch()
            if not picks:
                self._slots.release()
                await asyncio.sleep(0)
                continue
            task = asyncio.get_running_loop().create_task(self._process(key, picks))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _form_batch(self) -> tuple[ModelKey | None, list[tuple[Job, int]]]:
        """The next batch's model and tiles, once it is full or has waited ``max_wait``; none if idle."""
        self._expire()
        key = self._next_key()
        if key is None:
            self._wake.clear()
            return None, []
        # A partial batch waits a moment for more tiles, as long as that keeps no engine worker idle: with one
        # worker (a GPU) fuller batches are worth the wait, but where idle workers could share the tiles now (on a
        # CPU) waiting only delays them.
        partial = sum(len(j.todo) for j in self._jobs if j.key == key) < self.max_batch
        if partial and self.max_wait > 0 and (self.engine.workers == 1 or self._idle_workers() <= 0):
            await asyncio.sleep(self.max_wait)
            self._expire()
        picks = self._take(key)
        now = time.monotonic()
        for job, _ in picks:
            job.started = job.started or now
        return key, picks

    def _idle_workers(self) -> int:
        """Engine workers without a batch: each batch formed and not yet finished counts against one."""
        return self.engine.workers - len(self._batches)

    async def _process(self, key: ModelKey, picks: list[tuple[Job, int]]) -> None:
        """Cut, run and place one batch; an engine failure fails the jobs in the batch, not the server."""
        try:
            seconds = await asyncio.wrap_future(self._cut_run_place(key, picks))
        except Exception as exc:
            log.exception("model execution failed")
            for job, _ in picks:
                job.running -= 1
                if not job.dead:
                    job.future.set_exception(exc)
            return
        finally:
            self._slots.release()
        self._complete(picks)  # before the metrics hook, so a failing hook cannot strand the jobs
        if self.on_batch:
            self.on_batch(key, len(picks), seconds)

    def _cut_run_place(self, key: ModelKey, picks: list[tuple[Job, int]]) -> Future:
        """Cut, run and place the batch in threads; the future ends with the network's seconds, or with the first
        step's exception.

        Where the model makes the jobs' pixels itself (8-bit, on the CPU), cutting and placing are copies,
        a fraction of a millisecond a batch, so the engine thread does them: handing the batch to a tile thread and back
        would cost more CPU than the copies. Otherwise the tile
        threads cut and place around the engine, which leaves them the float-to-pixel conversion."""
        dtype = _out_dtype(picks)
        if self.engine.makes_pixels(key, dtype):
            return self._engine_pool.submit(self._cut_infer_place, key, picks, dtype)
        done: Future = Future()

        def place(ran: tuple[np.ndarray, float]) -> None:
            result, seconds = ran
            _then(done, self._tile_pool, lambda: _place(picks, result), lambda _: _settle(done, result=seconds))

        def run(batch: np.ndarray) -> None:
            _then(done, self._engine_pool, lambda: _timed(self.engine.run, key, batch), place)

        _then(done, self._tile_pool, lambda: _cut(picks), run)
        return done

    def _cut_infer_place(self, key: ModelKey, picks: list[tuple[Job, int]], dtype: np.dtype) -> float:
        result, seconds = _timed(self.engine.run_pixels, key, _cut(picks), dtype)  # (N, sT, sT, 3) of ``dtype``
        _place(picks, result)
        return seconds

    def _complete(self, picks: list[tuple[Job, int]]) -> None:
        now = time.monotonic()
        for job, _ in picks:
            job.running -= 1
        for job in {job for job, _ in picks}:
            if not job.todo and not job.running and not job.dead:
                job.finished = now
                job.padded = None  # the input is no longer needed; free it before encoding
                job.future.set_result(job)
            if job.dead or (not job.todo and not job.running):
                self._forget(job)


def _in_turn_order(jobs: list[Job]) -> Iterator[Job]:
    """Each job once per tile it has left, job by job: the first job's tiles, then the next job's."""
    for job in jobs:
        while job.todo:
            yield job


def _one_per_job_per_round(jobs: list[Job]) -> Iterator[Job]:
    """Each job once per tile it has left, one tile per job per round."""
    while jobs:
        for job in jobs:
            if job.todo:
                yield job
        jobs = [j for j in jobs if j.todo]


def _then(done: Future, pool: Executor, step: Callable[[], T], next_step: Callable[[T], None]) -> None:
    """Run ``step`` in ``pool``, then ``next_step`` on its result in the same thread; a failure of either ends
    ``done`` with the exception."""

    def finished(f: Future) -> None:
        try:
            next_step(f.result())
        except BaseException as exc:  # whatever it is, the awaiting task must hear of it
            _settle(done, exc=exc)

    try:
        pool.submit(step).add_done_callback(finished)
    except RuntimeError as exc:  # the pool was shut down: the batcher is stopping
        _settle(done, exc=exc)


def _timed(run: Callable[..., np.ndarray], *args) -> tuple[np.ndarray, float]:
    """``run(*args)`` and the seconds it took: the network's time, reported per batch."""
    t0 = time.perf_counter()
    return run(*args), time.perf_counter() - t0


def _settle(done: Future, *, result: object = None, exc: BaseException | None = None) -> None:
    """End ``done``, unless the awaiting task was cancelled (which cancelled it) first."""
    with contextlib.suppress(InvalidStateError):
        if exc is None:
            done.set_result(result)
        else:
            done.set_exception(exc)


def _cut(picks: list[tuple[Job, int]]) -> np.ndarray:
    """The tiles of a batch as one (N, 3, T + 2c, T + 2c) float32 array in [0, 1]."""
    windows = [job.grid.cut(job.padded, i) for job, i in picks]  # (T + 2c, T + 2c, 3) views
    return Engine.batch(windows, [job.pixel_scale for job, _ in picks])


def _out_dtype(picks: list[tuple[Job, int]]) -> np.dtype:
    """What the engine should return for a batch: its jobs' pixel type if they share one, else float."""
    dtypes = {job.out.dtype for job, _ in picks}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)


def _place(picks: list[tuple[Job, int]], result: np.ndarray) -> None:
    """Write each result tile into its job's output: (sT, sT, 3) pixels as they are, (3, sT, sT) floats converted
    to the job's pixel type."""
    for (job, i), tile in zip(picks, result, strict=True):
        if job.dead:
            continue
        if result.dtype == np.float32:
            tile = tile.transpose(1, 2, 0)
            if job.out.dtype != np.float32:
                tile = to_pixels(tile, job.out.dtype)
        job.grid.place(job.out, i, tile)
