"""Response schemas of the JSON endpoints."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ErrorBody", "ErrorResponse", "ModelInfo", "ModelsResponse", "HealthResponse"]


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable error code, e.g. too_large")
    message: str = Field(description="what went wrong and what to do")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelInfo(BaseModel):
    variant: str
    scale: int
    context: int = Field(description="LR pixels of context each tile carries per side")
    parameters: int | None = None
    macs_per_input_pixel: int | None = None
    trained: bool = Field(description="false for an untrained placeholder network")
    set5: dict[str, float] | None = Field(None, description="Set5 Y-PSNR/SSIM of the model and of bicubic")
    set5_jpeg: dict[str, dict[str, float]] | None = Field(
        None, description="per JPEG quality of the LR: Set5 Y-PSNR of the model and of bicubic of the same JPEG"
    )
    jpeg_quality: list[int] | None = Field(
        None,
        description="[low, high]: the JPEG qualities model=auto runs this model for under this server's clean model "
        "(its tier); null: none",
    )
    set5_webp: dict[str, dict[str, float]] | None = Field(
        None, description="per WebP quality of the LR: Set5 Y-PSNR of the model and of bicubic of the same WebP"
    )
    webp_quality: list[int] | None = Field(
        None,
        description="[low, high]: the lossy WebP qualities model=auto runs this model for under this server's clean "
        "model (its tier); null: none",
    )
    precision: str
    kernels: str = Field(description="what runs the model: 'native' (the service's own CPU kernels) or 'onnxruntime'")
    instruction_set: str | None = Field(
        None, description="the CPU instruction set the native kernels run on ('avx512', 'avx2'); null off them"
    )


class ModelsResponse(BaseModel):
    default_model: str = Field(description="what a request that names no model gets; auto: chosen per input")
    clean_model: str = Field(description="what auto runs for inputs that are not JPEGs or WebPs of some model's band")
    provider: str = Field(description="ONNX Runtime execution provider actually in use")
    device: str = Field(description="where the models run: 'cuda' or 'cpu'")
    device_reason: str = Field(
        description="why there: the GPUs the CUDA driver sees, or why not CUDA (UPSCALER_DEVICE=cpu, the CPU build "
        "of ONNX Runtime, no CUDA driver, no GPU)"
    )
    tile: int
    max_batch: int
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str
