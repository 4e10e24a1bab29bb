"""Service settings: one validated object, read from ``UPSCALER_*`` environment variables.

Settings whose value 0 means "for this machine" are resolved by the functions below, all here: ``default_processes``
before the server starts, the engine's threads and workers (``cpu_layout``) when it opens its sessions, and the
batch size and codec threads once the engine knows whether it runs on a GPU and on which kernels.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.host import available_cores
from service.imageio.decoding import INPUT_FORMATS
from service.model_files import default_model_dir

__all__ = ["Settings", "cpu_layout", "default_codec_threads", "default_max_batch", "default_processes"]


class Settings(BaseSettings):
    """Every limit and batching knob of the service. README.md lists them with their defaults."""

    model_config = SettingsConfigDict(env_prefix="UPSCALER_", env_file=None, extra="ignore")

    host: str = Field("127.0.0.1", description="address uvicorn binds to")
    port: int = Field(8000, ge=0, le=65535, description="port uvicorn binds to (0 = any free port)")
    model_dir: Path = Field(
        default_factory=default_model_dir,
        description="folder of <variant>_x<scale>.onnx models (default: the shipped ones)",
    )
    default_model: str = Field(
        "auto",
        description="model used when a request names none; auto: the one made for the input (a JPEG band's, or the "
        "clean model)",
    )
    clean_model: str = Field(
        "fast",
        description="the model auto runs for lossless inputs and lossy ones in no band; also the tier whose models "
        "auto runs for compressed inputs (quality-jpeg-* for quality; fast's where a tier has none)",
    )
    variants: list[str] = Field(default_factory=list, description="variants to load (empty = all found)")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$", description="auto: CUDA if ONNX Runtime has it")
    # fp16 is slower than fp32 on the GPUs measured, for these thin networks (bench/results/gpu.json).
    precision: str = Field(
        "auto",
        pattern="^(auto|fp32|fp16)$",
        description="auto = fp32; fp16: the models' _fp16 files on a GPU, where present",
    )
    threads: int = Field(
        0, ge=0, description="ONNX Runtime threads per model run (0 = cores / engine_workers on CPU, 1 on GPU)"
    )
    cpu_kernels: str = Field(
        "auto",
        pattern="^(auto|avx512|avx2|onnxruntime)$",
        description="auto: on a CPU with AVX-512 or AVX2 + FMA, models with kernel weights (_native.npz) run on the "
        "service's own kernels (service/runtime/csrc/fsrcnn.c), on the best of the two; avx512, avx2: on that one "
        "(start-up fails where the CPU lacks it); onnxruntime: ONNX Runtime runs every model",
    )
    processes: int = Field(
        0, ge=0, description="server processes sharing the port (0 = one per 2 cores with a GPU, 1 without)"
    )
    engine_workers: int = Field(
        0, ge=0, description="model runs at once (0 = on CPU one per core, or cores / threads; 1 on a GPU)"
    )
    codec_threads: int = Field(
        0, ge=0, description="threads decoding and encoding images (0 = one per core on a GPU, cores / 4 on CPU, >= 2)"
    )

    tile: int = Field(128, ge=16, le=1024, description="LR tile core size in pixels (fixed network input shape)")
    max_batch: int = Field(
        0, ge=0, le=256, description="most tiles in one model execution (0 = 8 on a GPU, 4 or 2 on a CPU)"
    )
    max_wait_ms: float = Field(
        2.0, ge=0, description="how long a non-full batch waits for more tiles (several workers: only if none is idle)"
    )
    max_queue_tiles: int = Field(4096, ge=1, description="tiles waiting across all requests before 503")
    scheduling: str = Field(
        "fair",
        pattern="^(fair|by-model)$",
        description="fair: waiting requests take turns for batches whatever model they run; by-model: the model of "
        "the oldest waiting request runs until its tiles are all taken (the older rule, for comparison)",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="deadline from arrival to inference done")

    max_body_bytes: int = Field(50 * 2**20, ge=1024, description="largest accepted request body")
    header_timeout_s: float = Field(
        10.0, gt=0, description="deadline for a request's line and headers to arrive (408 and closed after it)"
    )
    max_header_bytes: int = Field(
        262144, ge=1024, description="largest request line plus headers (431 and closed past it)"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="deadline for the whole request body to arrive (408 after it; 1 MB/s takes 50 MB)"
    )
    input_formats: list[str] = Field(
        default_factory=lambda: list(INPUT_FORMATS),
        description="image formats decoded (Pillow's names); any other upload is a 415 before it is opened",
    )
    decode_budget_s: float = Field(
        3.0, gt=0, description="longest one upload may decode (422 after it; its thread finishes in the background)"
    )
    max_input_pixels: int = Field(4096 * 4096, ge=1, description="largest input image (width x height)")
    max_output_pixels: int = Field(16384 * 16384, ge=1, description="largest output image (width x height)")
    png_compress_level: int = Field(
        1,
        ge=0,
        le=9,
        description="deflate level of PNG output (1-3: ISA-L, fast; 4-9: zlib, smaller and slower; 0: stored)",
    )
    default_quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality when a request names none")
    webp_effort: int = Field(
        2, ge=0, le=6, description="WebP encoder effort (libwebp's method, 0-6) when a request names none; 2 is fastest"
    )
    avif_speed: int = Field(
        9, ge=0, le=10, description="AVIF encoder speed (libavif's, 0 slowest and smallest to 10 fastest); 9 is fastest"
    )

    api_keys: list[str] = Field(default_factory=list, description="accepted X-API-Key values (empty = no auth)")
    public_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json", "/static"],
        description="paths (and their children) served without a key",
    )
    drain_seconds: float = Field(0.0, ge=0, description="pause after /readyz turns 503 on shutdown")
    log_level: str = Field("info", description="logging level")

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"UPSCALER_MODEL_DIR={v} is not a folder; point it at the folder of .onnx models")
        return v

    @field_validator("input_formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        from PIL import Image

        Image.init()  # Pillow registers its formats' names lazily
        names = [name.upper() for name in v]
        if "ICNS" in names:  # its directory gives one size and load() decodes a frame of another
            raise ValueError("UPSCALER_INPUT_FORMATS: ICNS frames cannot be bounded before they are decoded; remove it")
        unknown = sorted(set(names) - set(Image.OPEN))
        if unknown or not names:
            raise ValueError(
                f"UPSCALER_INPUT_FORMATS: {unknown or 'none'} is not a format Pillow opens here; "
                f"use some of {sorted(Image.OPEN)}"
            )
        return names

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, v: list[str]) -> list[str]:
        if any(not key.strip() for key in v):  # an empty key would match a request that sends none
            raise ValueError("UPSCALER_API_KEYS has an empty key; it would let requests without a key in")
        return v

    @property
    def model_needed(self) -> tuple[str, str]:
        """The model a request naming none needs served, and the setting that names it: the clean model for auto."""
        if self.default_model == "auto":
            return self.clean_model, f"UPSCALER_CLEAN_MODEL={self.clean_model!r} (what auto runs)"
        return self.default_model, f"UPSCALER_DEFAULT_MODEL={self.default_model!r}"

    @model_validator(mode="after")
    def _default_is_served(self) -> Settings:
        needed, what = self.model_needed
        if self.variants and needed not in self.variants:
            raise ValueError(f"{what} is not in UPSCALER_VARIANTS={self.variants}")
        return self


def default_codec_threads(on_gpu: bool, cores: int) -> int:
    """The codec threads when ``UPSCALER_CODEC_THREADS`` is 0. On a CPU, decoding and encoding cost about an eighth
    of the network's CPU time per image (bench/results/service.json), so a quarter of the cores keeps up with the
    engine; on a GPU they are most of the CPU's work, so one per core. At least 2 either way."""
    return max(2, cores if on_gpu else cores // 4)


def default_max_batch(on_gpu: bool, native: bool = False) -> int:
    """The tiles per model execution when ``UPSCALER_MAX_BATCH`` is 0: 8 on a GPU, where bigger batches keep it
    busy. On a CPU each core runs its own batch. ONNX Runtime runs a batch layer by layer, and small ones stay in
    the core's cache: 2. The service's native kernels (``native``: they run every model served) take a batch a tile
    at a time, so there its size only sets how often the engine threads wake the event loop: 4, fewer wake-ups and
    preemptions than 2 at no cost to the kernels (docs/performance.md has the figures)."""
    if on_gpu:
        return 8
    return 4 if native else 2


def default_processes(on_gpu: bool, cores: int) -> int:
    """The server processes when ``UPSCALER_PROCESSES`` is 0. One process decodes, encodes, cuts tiles and speaks
    HTTP under one interpreter lock, and uses at most about 2.3 cores doing so. On a CPU the network is the limit
    and one process keeps every core busy. With a GPU the interpreter lock is the limit, so there one process per 2
    cores, each with its own engine (docs/performance.md, GPU, has the figures)."""
    return max(1, cores // 2) if on_gpu else 1


def cpu_layout(threads: int = 0, workers: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(threads per run, concurrent runs) on a CPU; 0 means "fill the cores with the other".

    By default every core runs its own batch on one thread: one thread never waits for the other at the end of
    each operator, which matters most in the service, where codec threads take turns on the same cores.
    """
    cores = cores or available_cores()
    workers = workers or (max(1, cores // threads) if threads else cores)
    return threads or max(1, cores // workers), workers
