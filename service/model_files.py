"""The model files: how they are named, what they hold and how a folder of them is read.

One contract between ``export/``, which writes the files, and the runtime, which reads them:

- ``<variant>_x<scale>.onnx``: the model. Input ``lr`` (N, 3, H + 2c, W + 2c) float32 RGB in [0, 1],
  mirror-padded by the context c; output ``sr`` (N, 3, sH, sW) float32, to be clipped to [0, 1]. Its ONNX
  metadata holds ``variant``, ``scale`` and ``context``.
- Files derived from it, each computing the same function for one runtime, used only while the SHA-256 they
  record of the model (``source_sha256``) is the model file's own:
    - ``<stem>_fp16.onnx``: fp16 weights and compute (GPUs, when asked for fp16);
    - ``<stem>_cpu.onnx``: the graph lowered for ONNX Runtime's CPU kernels (``export.cpu``), with a second
      output ``pixels_uint8``, the result as (N, sH, sW, 3) 8-bit pixels;
    - ``<stem>_native.npz``: the weights packed for the service's own CPU kernels (``export.kernel_weights``).
- ``<stem>.json``: the model card (:class:`ModelCard`), and ``<stem>.md`` for people.

The shipped models are package data of ``export`` (``export/models``), so a clone and ``pip install .`` find
them the same way (:func:`default_model_dir`). Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypedDict

import numpy as np
import onnxruntime as ort

__all__ = [
    "INPUT",
    "OUTPUT",
    "FP16_SUFFIX",
    "CPU_GRAPH_SUFFIX",
    "KERNEL_WEIGHTS_SUFFIX",
    "SOURCE_SHA256",
    "ModelKey",
    "ModelCard",
    "ModelSpec",
    "default_model_dir",
    "discover_models",
    "file_sha256",
    "model_stem",
    "pixels_output",
]

log = logging.getLogger("service.model_files")

INPUT, OUTPUT = "lr", "sr"  # the graph's input and output names
FP16_SUFFIX = "_fp16"  # <stem>_fp16.onnx
CPU_GRAPH_SUFFIX = "_cpu"  # <stem>_cpu.onnx
KERNEL_WEIGHTS_SUFFIX = "_native"  # <stem>_native.npz
SOURCE_SHA256 = "source_sha256"  # metadata key (ONNX) or array (npz) of a derived file: its model's SHA-256
_NAME = re.compile(r"^(?P<variant>[a-z0-9][a-z0-9-]*)_x(?P<scale>[234])\.onnx$")
_DERIVED_ONNX = (FP16_SUFFIX, CPU_GRAPH_SUFFIX)


class ModelKey(NamedTuple):
    """What a request names: a variant at a scale."""

    variant: str
    scale: int

    def __str__(self) -> str:
        return model_stem(self.variant, self.scale)


class ModelCard(TypedDict, total=False):
    """The facts ``export.to_onnx`` writes beside a model (``<stem>.json``); the service shows some of them."""

    variant: str
    scale: int
    context: int
    config: dict  # the network's constructor arguments (model.network.SRNetConfig)
    parameters: int
    macs_per_input_pixel: int
    opset: int
    trained: bool  # false for an untrained placeholder
    training: dict  # data, degradation, steps, time, device, ...
    set5: dict[str, float]  # Y-PSNR/SSIM of the model and of bicubic on Set5, clean inputs
    jpeg_quality: list[int]  # [low, high]: the JPEG qualities auto runs the model for; absent = none
    set5_jpeg: dict[str, dict[str, float]]  # per JPEG quality of the LR: the model's and bicubic's Y-PSNR
    webp_quality: list[int]  # [low, high]: the lossy WebP qualities auto runs the model for; absent = none
    set5_webp: dict[str, dict[str, float]]  # per WebP quality of the LR: the model's and bicubic's Y-PSNR


def model_stem(variant: str, scale: int) -> str:
    """``<variant>_x<scale>``, the name every file of a model starts with."""
    return f"{variant}_x{scale}"


def pixels_output(dtype: np.dtype | type) -> str:
    """The name of a graph's extra output that gives the result as integer pixels of ``dtype``."""
    return f"pixels_{np.dtype(dtype).name}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_model_dir() -> Path:
    """The shipped models: ``export/models`` of the installed (or cloned) ``export`` package."""
    spec = importlib.util.find_spec("export")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the export package, which carries the shipped models, is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@dataclass(frozen=True)
class ModelSpec:
    """A servable model and the files derived from it that may run it."""

    variant: str
    scale: int
    context: int  # LR pixels of context the network needs on each side of a tile
    path: Path
    fp16_path: Path | None = None
    cpu_path: Path | None = None
    kernel_weights_path: Path | None = None
    card: ModelCard = field(default_factory=dict)

    @property
    def key(self) -> ModelKey:
        return ModelKey(self.variant, self.scale)


def read_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata, read without optimising or running the graph."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.get_modelmeta().custom_metadata_map


def discover_models(location: str | Path) -> dict[ModelKey, ModelSpec]:
    """The servable models in a folder (see the module docstring), or one ``.onnx`` file."""
    location = Path(location)
    if location.is_file():
        paths = [location]
    else:  # derived files are found through their model
        paths = sorted(p for p in location.glob("*.onnx") if not p.stem.endswith(_DERIVED_ONNX))
    specs: dict[ModelKey, ModelSpec] = {}
    for path in paths:
        match = _NAME.match(path.name)
        meta = read_metadata(path)
        if not match and "context" not in meta:
            continue
        match = match or {"variant": "custom", "scale": meta.get("scale")}
        card_path = path.with_suffix(".json")
        digest = file_sha256(path)
        fp16, cpu = (_derived(path, digest, suffix + ".onnx", _onnx_source) for suffix in _DERIVED_ONNX)
        spec = ModelSpec(
            variant=meta.get("variant", match["variant"]),
            scale=int(meta.get("scale", match["scale"])),
            context=int(meta["context"]),
            path=path,
            fp16_path=fp16,
            cpu_path=cpu,
            kernel_weights_path=_derived(path, digest, KERNEL_WEIGHTS_SUFFIX + ".npz", _npz_source),
            card=json.loads(card_path.read_text()) if card_path.exists() else {},
        )
        specs[spec.key] = spec
    return specs


def _derived(model: Path, model_sha256: str, name: str, written_from: Callable[[Path], str | None]) -> Path | None:
    """The file ``<stem><name>`` derived from ``model``, if it exists and ``written_from(file)``, the SHA-256 it
    records of its model, is this very model file's."""
    derived = model.with_name(model.stem + name)
    if not derived.exists():
        return None
    try:
        source = written_from(derived)
    except (OSError, ValueError) as exc:  # an .npz that is not one, or truncated
        log.warning("ignoring %s: it cannot be read (%s)", derived.name, exc)
        return None
    if source != model_sha256:
        log.warning(
            "ignoring %s: it was not written from this %s; delete it, or rewrite it with "
            "python -m export.to_onnx --derived %s (needs the train extra)",
            *(derived.name, model.name, model),
        )
        return None
    return derived


def _onnx_source(path: Path) -> str | None:
    return read_metadata(path).get(SOURCE_SHA256)


def _npz_source(path: Path) -> str | None:
    with np.load(path, allow_pickle=False) as arrays:
        return str(arrays[SOURCE_SHA256]) if SOURCE_SHA256 in arrays else None
