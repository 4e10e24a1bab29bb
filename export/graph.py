"""In-place edits of ONNX graphs shared by the exporters."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

__all__ = ["drop_unused_initializers", "file_sha256"]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file: what a twin records of the model it was written from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initialisers no node reads (left behind when a rewrite replaces a constant)."""
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
