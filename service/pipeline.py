"""One upscale request, start to finish: read -> decode -> batcher/engine -> resample -> encode.

Knows nothing of HTTP: the caller passes a coroutine that reads the body and
one that tells whether the client has gone away. Large intermediate buffers
are released as soon as the next stage has what it needs (the body after
decoding, the pixels once the batcher has its padded copy), so a big image
holds at most about its output plus its input in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from service.errors import ClientGone, Overloaded
from service.imageio.decoder_pool import DecoderPool
from service.imageio.decoding import Decoded, Limits, decode
from service.imageio.encoding import check_output, encode
from service.imageio.resampling import resample
from service.model_choice import ModelChoice, choose_model, scales_of
from service.output_size import OutputPlan, SizeRequest
from service.runtime.batcher import Batcher
from service.settings import Settings

__all__ = ["Upload", "UpscaleResult", "Pipeline"]


@dataclass(frozen=True)
class Upload:
    """An uploaded image, as the HTTP layer read it."""

    data: bytes
    filename: str | None  # the client's name for the file, if it sent one


@dataclass(frozen=True)
class UpscaleResult:
    body: bytes
    format: str  # png, jpeg or webp
    filename: str | None  # the client's name for the input, if it sent one
    model: ModelChoice  # the model that ran, and why
    plan: OutputPlan  # the model scale and the final size
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    timings: dict[str, float]  # seconds: decode, queue, infer, encode (resampling included)


class Pipeline:
    def __init__(self, batcher: Batcher, decoders: DecoderPool, codec_pool: Executor, settings: Settings):
        """``decoders`` decode uploads within their time budget; ``codec_pool`` encodes results."""
        self.batcher, self.decoders, self.codec_pool, self.settings = batcher, decoders, codec_pool, settings

    async def _in_pool(self, fn, /, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, lambda: fn(*args, **kwargs))

    async def run(
        self,
        read: Callable[[], Awaitable[Upload]],
        is_disconnected: Callable[[], Awaitable[bool]],
        *,
        model: str,
        size: SizeRequest,
        fmt: str | None,
        quality: int | None,
        effort: int | None = None,
    ) -> UpscaleResult:
        s = self.settings
        if self.batcher.queued_tiles >= s.max_queue_tiles:  # refuse before reading and decoding the body
            raise Overloaded(f"the server is busy ({self.batcher.queued_tiles} tiles queued); retry shortly")
        upload = await read()
        filename = upload.filename
        t0 = time.perf_counter()
        specs = self.batcher.engine.specs
        limits = Limits(s.max_input_pixels, s.max_output_pixels, size, scales_of(specs, model, s.clean_model))
        decoded = await self.decoders.run(decode, upload.data, limits, tuple(s.input_formats))
        del upload  # the body is no longer needed
        t_decode = time.perf_counter() - t0
        in_size, plan = (decoded.width, decoded.height), decoded.plan
        fmt = fmt or decoded.default_format()
        check_output(plan.width, plan.height, fmt)  # before any tile runs
        choice = choose_model(specs, model, plan.model_scale, s.clean_model, decoded.compression)
        job = await _unless_disconnected(
            is_disconnected, self.batcher.upscale(choice.key, decoded.take_pixels(), s.request_timeout_s)
        )
        t0 = time.perf_counter()
        options = {
            "fmt": fmt,
            "quality": quality or s.default_quality,
            "webp_effort": s.webp_effort if effort is None else effort,
            "avif_speed": s.avif_speed,
            "png_compress_level": s.png_compress_level,
        }
        body = await self._in_pool(_finish, job.out, decoded, plan, options)
        timings = {"decode": t_decode, **job.timings(), "encode": time.perf_counter() - t0}
        return UpscaleResult(body, fmt, filename, choice, plan, in_size, (plan.width, plan.height), timings)


def _finish(out, decoded: Decoded, plan: OutputPlan, options: dict) -> bytes:
    """The model's output resampled to the final size where the request asked for another, then encoded."""
    if plan.needs_resampling(decoded.width, decoded.height):
        out = resample(out, plan.width, plan.height, plan.box)
    return encode(out, decoded, alpha_box=tuple(b / plan.model_scale for b in plan.box), **options)


async def _unless_disconnected(is_disconnected: Callable[[], Awaitable[bool]], coro):
    """Await ``coro``; if the client goes away first, cancel it (its queued tiles are dropped)."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await is_disconnected():
                # An error, not CancelledError: it is answered (499) and logged like any other outcome.
                raise ClientGone("the client closed the connection before its image was done")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
