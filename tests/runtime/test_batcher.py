"""Cross-request batching: shared batches, fairness, deadlines and cancellation (in-process, real engine)."""

import asyncio
import shutil
import threading
import time

import numpy as np
import pytest

from service.errors import DeadlineExceeded, Overloaded
from service.runtime import batcher as batcher_module
from service.runtime.batcher import Batcher
from service.runtime.engine import Engine, to_pixels
from tests.conftest import MODELS, smooth_image

KEY = ("fast", 2)


@pytest.fixture(scope="module")
def engine():
    return Engine(MODELS / "fast_x2.onnx", tile=16, prefer_gpu=False)  # the CPU path, on any machine


@pytest.fixture(scope="module")
def one_worker():
    """One engine worker, as on a GPU: a batch takes up to max_batch tiles whatever the number of workers."""
    return Engine(MODELS / "fast_x2.onnx", tile=16, prefer_gpu=False, workers=1)


@pytest.fixture(scope="module")
def two_workers():
    return Engine(MODELS / "fast_x2.onnx", tile=16, prefer_gpu=False, workers=2)


def run(coro):
    return asyncio.run(coro)


def slow_network(engine: Engine, monkeypatch: pytest.MonkeyPatch, seconds: float = 0.02) -> None:
    """Make every batch take at least ``seconds``, whichever of the engine's calls the batcher makes."""

    def slowly(method):
        def slow(*args):
            time.sleep(seconds)
            return method(*args)

        return slow

    monkeypatch.setattr(engine, "run", slowly(engine.run))
    monkeypatch.setattr(engine, "run_pixels", slowly(engine.run_pixels))


async def _with_batcher(engine, body, **options):
    batches: list[int] = []
    batcher = Batcher(engine, on_batch=lambda key, size, seconds: batches.append(size), **options)
    batcher.start()
    try:
        return await body(batcher, batches)
    finally:
        await batcher.stop()


def test_images_of_different_sizes_share_batches(one_worker):
    async def body(batcher, batches):
        images = [smooth_image(h, w) for h, w in [(10, 12), (16, 5), (7, 7), (14, 9)]]  # one tile each
        jobs = await asyncio.gather(*(batcher.upscale(KEY, im, timeout=30) for im in images))
        assert [j.out.shape[:2] for j in jobs] == [(2 * im.shape[0], 2 * im.shape[1]) for im in images]
        return batches

    batches = run(_with_batcher(one_worker, body, max_batch=8, max_wait=0.05))
    assert batches == [4]


@pytest.mark.parametrize("max_wait", [0, 0.05])
def test_a_small_image_alone_is_spread_over_the_idle_engine_workers_at_once(two_workers, max_wait):
    """Its tiles do not wait for a batch to fill while a worker is idle (a wait would have split the rest 1 + 1)."""

    async def body(batcher, batches):
        await batcher.upscale(KEY, smooth_image(32, 32), timeout=30)  # 4 tiles
        return batches

    assert run(_with_batcher(two_workers, body, max_batch=8, max_wait=max_wait)) == [2, 2]


def test_batches_are_full_once_every_engine_worker_has_one(two_workers):
    async def body(batcher, batches):
        await batcher.upscale(KEY, smooth_image(64, 64), timeout=30)  # 16 tiles
        return batches

    assert run(_with_batcher(two_workers, body, max_batch=4, max_wait=0)) == [4, 4, 4, 4]


def test_a_huge_image_does_not_starve_small_ones(engine):
    """A small image's tile goes into the next batch formed, so it waits for a few batches, not for the huge image.

    Before its batch finishes, the batches already in flight finish, and with several engine workers a few
    batches formed after it may overtake it; first come, first served would make it wait for about 100."""
    depth = 3

    async def body(batcher, batches):
        huge = asyncio.ensure_future(batcher.upscale(KEY, smooth_image(320, 320), timeout=60))  # 400 tiles
        while not batches:  # the huge job is being served (a fixed sleep let it finish first on a fast CPU)
            await asyncio.sleep(0.001)
        waits = []
        for i in range(3):
            before = len(batches)
            await batcher.upscale(KEY, smooth_image(12, 12, seed=i), timeout=60)
            waits.append(len(batches) - before)
        assert not huge.done()
        await huge
        return waits, len(batches)

    waits, total = run(_with_batcher(engine, body, max_batch=4, max_wait=0, depth=depth))
    assert total >= 100 and max(waits) <= 5 * depth


@pytest.fixture(scope="module")
def mixed():
    """Two models at three scales, as ``auto`` serves them (the clean one and a JPEG band's); one engine worker, so
    batches run in the order they are formed."""
    return Engine(MODELS, tile=16, prefer_gpu=False, workers=1, variants=["fast", "fast-jpeg-q90"])


OTHER_MODELS = {  # a big job's model and a small one's, as the service sees them
    "another variant": (("fast-jpeg-q90", 2), ("fast", 2)),
    "another scale": (("fast", 4), ("fast", 2)),
    "another variant and scale": (("fast-jpeg-q90", 4), ("fast", 2)),
    "another variant, scale 3": (("fast", 3), ("fast-jpeg-q90", 3)),
}


async def _with_keys(engine, body, **options):
    """``_with_batcher``, recording each batch's model and size in the order they finish."""
    batches: list[tuple[tuple[str, int], int]] = []
    batcher = Batcher(engine, on_batch=lambda key, size, seconds: batches.append((key, size)), **options)
    batcher.start()
    try:
        return await body(batcher, batches)
    finally:
        await batcher.stop()


async def _small_behind_big(batcher, batches, big_key, small_key):
    """A big job of ``big_key``, then (once it is being served) a one-batch job of ``small_key``: how many batches
    finished while the small one waited, and how many of the big one's tiles were still to be run then."""
    big = batcher.submit(big_key, smooth_image(160, 160), timeout=60)  # 100 tiles
    while not batches:
        await asyncio.sleep(0.001)
    before = len(batches)
    await batcher.upscale(small_key, smooth_image(16, 24, seed=1), timeout=60)  # 2 tiles
    waited = len(batches) - before
    left = len(big.todo) + big.running
    await big.future
    return waited, left


@pytest.mark.parametrize("case", OTHER_MODELS)
def test_a_small_request_waits_a_few_batches_behind_a_big_one_of_another_model(mixed, monkeypatch, case):
    """Fair: the small job's turn comes after the batches already formed, whatever model or scale the big one runs."""
    slow_network(mixed, monkeypatch)  # 25 batches of at least 20 ms: the big job runs on while the small one waits
    big_key, small_key = OTHER_MODELS[case]
    depth = 3
    body = lambda batcher, batches: _small_behind_big(batcher, batches, big_key, small_key)  # noqa: E731
    waited, left = run(_with_keys(mixed, body, max_batch=4, max_wait=0, depth=depth))
    assert waited <= depth + 2  # the batches formed before it, one turn of the job ahead of it, then its own
    assert left > 0  # the big job was still running when the small one was done


def test_by_model_scheduling_keeps_a_big_jobs_model_until_its_tiles_are_taken(mixed, monkeypatch):
    """The older rule (UPSCALER_SCHEDULING=by-model), kept to measure against: the small job of another model waits
    for every tile of the big one."""
    slow_network(mixed, monkeypatch)
    big_key, small_key = OTHER_MODELS["another variant and scale"]
    body = lambda batcher, batches: _small_behind_big(batcher, batches, big_key, small_key)  # noqa: E731
    waited, left = run(_with_keys(mixed, body, max_batch=4, max_wait=0, depth=3, scheduling="by-model"))
    assert left == 0 and waited >= 24  # all 25 of the big job's batches but the first ran before it


def test_jobs_of_different_models_and_scales_take_turns_batch_by_batch(mixed):
    keys = [("fast", 2), ("fast-jpeg-q90", 3), ("fast", 4)]

    async def body(batcher, batches):
        jobs = [batcher.submit(key, smooth_image(48, 32, seed=i), timeout=60) for i, key in enumerate(keys)]  # 6 tiles
        await asyncio.gather(*(job.future for job in jobs))
        return batches

    batches = run(_with_keys(mixed, body, max_batch=2, max_wait=0))
    assert [key for key, _ in batches] == keys * 3  # 3 batches of 2 tiles each, in turns
    assert all(size == 2 for _, size in batches)


def test_a_turn_is_filled_with_other_waiting_tiles_of_its_model(mixed):
    """Batching keeps its gain: a one-tile job's turn runs a full batch, topped up from its model's other jobs."""

    async def body(batcher, batches):
        big = batcher.submit(("fast", 2), smooth_image(64, 32), timeout=60)  # 8 tiles
        small = batcher.submit(("fast", 2), smooth_image(8, 8), timeout=60)  # 1 tile
        await asyncio.gather(big.future, small.future)
        return batches

    assert run(_with_keys(mixed, body, max_batch=4, max_wait=0)) == [
        (("fast", 2), 4),
        (("fast", 2), 4),
        (("fast", 2), 1),
    ]


def test_every_job_of_a_mix_gets_the_pixels_of_its_own_model(mixed):
    keys = [("fast", 2), ("fast-jpeg-q90", 2), ("fast", 3), ("fast-jpeg-q90", 4)]
    images = [smooth_image(40, 24, seed=i) for i in range(len(keys))]

    async def body(batcher, batches):
        return await asyncio.gather(*(batcher.upscale(k, im, timeout=60) for k, im in zip(keys, images, strict=True)))

    jobs = run(_with_keys(mixed, body, max_batch=3, max_wait=0))
    for job, key, im in zip(jobs, keys, images, strict=True):
        assert np.array_equal(job.out, to_pixels(mixed.upscale(key, im.astype(np.float32) / 255), np.uint8)), key


def test_an_unknown_scheduling_rule_is_refused(engine):
    with pytest.raises(ValueError, match="scheduling"):
        Batcher(engine, scheduling="fifo")


def test_full_queue_refuses_new_work(engine):
    async def body(batcher, batches):
        first = asyncio.ensure_future(batcher.upscale(KEY, smooth_image(160, 160), timeout=60))  # 100 tiles
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            batcher.submit(KEY, smooth_image(40, 40), timeout=60)
        await first

    run(_with_batcher(engine, body, max_batch=4, max_queue_tiles=50))


def test_expired_job_fails_and_leaves_the_queue(engine, monkeypatch):
    slow_network(engine, monkeypatch)  # 200 batches of at least 20 ms each: the job cannot finish in 50 ms

    async def body(batcher, batches):
        with pytest.raises(DeadlineExceeded):
            await batcher.upscale(KEY, smooth_image(320, 320), timeout=0.05)
        assert batcher.queued_tiles == 0

    run(_with_batcher(engine, body, max_batch=2))


def test_cancelled_request_drops_its_tiles(engine, monkeypatch):
    slow_network(engine, monkeypatch)  # so the request is still running when it is cancelled

    async def body(batcher, batches):
        task = asyncio.ensure_future(batcher.upscale(KEY, smooth_image(320, 320), timeout=60))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert batcher.queued_tiles == 0
        ran = len(batches)
        await asyncio.sleep(0.2)
        return ran, len(batches)

    ran, later = run(_with_batcher(engine, body, max_batch=2, depth=3))
    assert ran < 200  # cancelled part-way (320 x 320 at tile 16 is 400 tiles, 200 batches)
    assert later <= ran + 3  # at most the batches in flight (depth) when it was cancelled


def test_batches_overlap_up_to_the_depth_and_no_further(engine, monkeypatch):
    """While the network runs one batch, the next is cut: batches between cut and place reach the depth.
    (Float results, so the tile threads cut and place; see the next test for 8-bit pixels.)"""
    in_flight, most, lock = 0, 0, threading.Lock()
    cut, place = batcher_module._cut, batcher_module._place

    def counting_cut(picks):
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        return cut(picks)

    def counting_place(picks, result):
        nonlocal in_flight
        place(picks, result)
        with lock:
            in_flight -= 1

    monkeypatch.setattr(batcher_module, "_cut", counting_cut)
    monkeypatch.setattr(batcher_module, "_place", counting_place)
    slow_network(engine, monkeypatch)  # slower than cutting, so later batches are cut while it runs

    img = smooth_image(64, 64).astype(np.float32) / 255

    async def body(batcher, batches):
        return (await batcher.upscale(KEY, img, timeout=60)).out

    out = run(_with_batcher(engine, body, max_batch=2, depth=3))
    assert most == 3
    assert np.abs(out - engine.upscale(KEY, img)).max() <= 1e-5  # every tile placed where it belongs


def test_eight_bit_pixels_made_by_the_model_are_cut_and_placed_in_the_engine_threads(engine, monkeypatch):
    """Cutting and placing 8-bit tiles are copies, cheaper in place than a hand-off to another thread."""
    threads = set()
    cut, place = batcher_module._cut, batcher_module._place

    def recording(step):
        def recorded(*args):
            threads.add(threading.current_thread().name.split("_")[0])
            return step(*args)

        return recorded

    monkeypatch.setattr(batcher_module, "_cut", recording(cut))
    monkeypatch.setattr(batcher_module, "_place", recording(place))
    img = smooth_image(40, 30)

    async def body(batcher, batches):
        return (await batcher.upscale(KEY, img, timeout=30)).out

    out = run(_with_batcher(engine, body))
    assert threads == {"engine"}
    assert np.array_equal(out, to_pixels(engine.upscale(KEY, img.astype(np.float32) / 255), np.uint8))


def test_float_input_gives_float_output_equal_to_engine(engine):
    img = smooth_image(20, 33).astype(np.float32) / 255

    async def body(batcher, batches):
        return (await batcher.upscale(KEY, img, timeout=30)).out

    out = run(_with_batcher(engine, body))
    assert np.abs(out - engine.upscale(KEY, img)).max() <= 1e-5


def test_a_batch_of_eight_and_sixteen_bit_and_float_images_gives_each_its_own_pixels(one_worker):
    """One batch, three output types: the engine returns float and each tile is converted to its job's type."""
    img8 = smooth_image(14, 15)
    images = [img8, img8.astype(np.uint16) * 257, img8.astype(np.float32) / 255]

    async def body(batcher, batches):
        jobs = await asyncio.gather(*(batcher.upscale(KEY, im, timeout=30) for im in images))
        return [j.out for j in jobs], batches

    (out8, out16, outf), batches = run(_with_batcher(one_worker, body, max_batch=8, max_wait=0.05))
    assert batches == [3]
    sr = one_worker.upscale(KEY, img8.astype(np.float32) / 255)
    assert out8.dtype == np.uint8 and np.array_equal(out8, to_pixels(sr, np.uint8))
    assert out16.dtype == np.uint16 and np.abs(out16.astype(int) - to_pixels(sr, np.uint16)).max() <= 1
    assert outf.dtype == np.float32 and np.abs(outf - sr).max() <= 1e-5


def test_without_pixel_outputs_the_engine_thread_only_runs_the_network(tmp_path, monkeypatch):
    """A model without pixel outputs (any model on a GPU) returns floats; tile threads convert them, not the
    engine's thread, which on a GPU would otherwise stall the device."""
    shutil.copy(MODELS / "fast_x2.onnx", tmp_path / "fast_x2.onnx")
    plain = Engine(tmp_path, tile=16)
    engine_threads = set()
    real_to_pixels = batcher_module.to_pixels

    def recording_to_pixels(x, dtype):
        engine_threads.add(threading.current_thread().name.startswith("engine"))
        return real_to_pixels(x, dtype)

    monkeypatch.setattr(batcher_module, "to_pixels", recording_to_pixels)

    def no_pixels(*args):  # an Exception, so the batcher fails the job and the test ends rather than hangs
        raise AssertionError("run_pixels called for a model without pixel outputs")

    monkeypatch.setattr(plain, "run_pixels", no_pixels)
    img = smooth_image(40, 30)

    async def body(batcher, batches):
        return (await batcher.upscale(KEY, img, timeout=30)).out

    out = run(_with_batcher(plain, body))
    assert engine_threads == {False}
    assert np.array_equal(out, to_pixels(plain.upscale(KEY, img.astype(np.float32) / 255), np.uint8))


def test_a_batch_of_8_bit_16_bit_and_float_tiles_gives_each_its_values_in_0_1(engine):
    grid = engine.grid(KEY, 20, 20)
    images = [
        np.full((20, 20, 3), 51, np.uint8),
        np.full((20, 20, 3), 13107, np.uint16),
        np.full((20, 20, 3), 0.2, np.float32),
    ]
    jobs = [batcher_module.Job(KEY, grid, grid.pad(img), img, deadline=0.0, future=None) for img in images]
    batch = batcher_module._cut([(job, 0) for job in jobs])
    assert batch.dtype == np.float32 and batch.shape == (3, 3, grid.input_size, grid.input_size)
    assert batch.flags.c_contiguous  # as ONNX Runtime reads it, without a copy of its own
    assert np.allclose(batch, 0.2, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["pixels-in-engine-threads", "floats-via-tile-threads"])
def test_an_engine_failure_fails_its_batch_and_the_next_request_is_served(engine, monkeypatch, dtype):
    calls = 0

    def failing_once(run):
        def maybe_fail(*args):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("the device fell over")
            return run(*args)

        return maybe_fail

    monkeypatch.setattr(engine, "run", failing_once(engine.run))
    monkeypatch.setattr(engine, "run_pixels", failing_once(engine.run_pixels))
    img = smooth_image(16, 16)  # one tile, so one batch
    img = img.astype(np.float32) / 255 if dtype == np.float32 else img

    async def body(batcher, batches):
        with pytest.raises(RuntimeError, match="fell over"):
            await batcher.upscale(KEY, img, timeout=30)
        return (await batcher.upscale(KEY, img, timeout=30)).out

    out = run(_with_batcher(engine, body))
    assert out.shape == (32, 32, 3) and out.dtype == dtype and calls == 2
