"""GET /v1/models: the models served and what runs them."""

from __future__ import annotations

from fastapi import APIRouter

from service.errors import NotReady
from service.http.dependencies import State
from service.http.schemas import ModelInfo, ModelsResponse
from service.model_choice import auto_bands
from service.model_files import ModelKey

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models", response_model=ModelsResponse)
async def models(state: State) -> ModelsResponse:
    """The variants and scales served, their model-card facts and the execution provider in use."""
    if state.engine is None:
        raise NotReady("models are still loading")
    eng, clean = state.engine, state.settings.clean_model
    jpeg_bands, webp_bands = (auto_bands(eng.specs, field, clean) for field in ("jpeg_quality", "webp_quality"))
    infos = [
        ModelInfo(
            variant=v,
            scale=sc,
            context=spec.context,
            parameters=spec.card.get("parameters"),
            macs_per_input_pixel=spec.card.get("macs_per_input_pixel"),
            trained=spec.card.get("trained", False),
            set5=spec.card.get("set5"),
            set5_jpeg=spec.card.get("set5_jpeg"),
            jpeg_quality=jpeg_bands.get(ModelKey(v, sc)),
            set5_webp=spec.card.get("set5_webp"),
            webp_quality=webp_bands.get(ModelKey(v, sc)),
            precision="fp16" if eng.fp16 else "fp32",
            kernels=eng.kernels((v, sc)),
            instruction_set=eng.instruction_set((v, sc)),
        )
        for (v, sc), spec in sorted(eng.specs.items())
    ]
    return ModelsResponse(
        default_model=state.settings.default_model,
        clean_model=clean,
        provider=eng.provider,
        device=state.device,
        device_reason=state.device_reason,
        tile=eng.tile,
        max_batch=state.max_batch,
        models=infos,
    )
