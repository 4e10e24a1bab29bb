"""In-place edits of ONNX graphs shared by the exporters."""

from __future__ import annotations

import onnx

__all__ = ["drop_unused_initializers"]


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initialisers no node reads (left behind when a rewrite replaces a constant)."""
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
