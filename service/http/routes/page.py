"""The page to try the upscaler in a browser (``service/http/static``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

__all__ = ["router", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The page to try the upscaler in a browser (service/http/static)."""
    return FileResponse(STATIC_DIR / "index.html")
