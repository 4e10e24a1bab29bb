"""The service's optional compiled parts: plain C libraries that setup.py builds next to the code that uses them.

Each is named like an extension module (``service/<part>/_<name>.cpython-311-x86_64-linux-gnu.so``) so that pip
builds it with the package, in place for ``pip install -e .``. Its source is ``service/<part>/csrc/<name>.c`` and
its interface is declared once, in ``service/<part>/csrc/<name>.h``: the C includes that header, so the compiler
checks the definitions against it, and cffi builds the Python binding from the same text, so a call with the wrong
number or types of arguments raises TypeError instead of crashing the process. cffi releases the GIL for every call.
Where a part was not built (no C compiler) or cannot be loaded, the caller gets the reason and keeps its other path.
"""

from __future__ import annotations

import importlib.machinery
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cffi import FFI

__all__ = ["Library", "load_library"]


@dataclass(frozen=True)
class Library:
    """A loaded compiled part: ``lib`` has its functions and constants, ``ffi`` its types."""

    ffi: FFI
    lib: Any

    def address(self, array: np.ndarray | None) -> Any:
        """A ``void *`` to the first element of ``array`` (its layout is the caller's to check), or NULL for None.
        The array must outlive the call."""
        return self.ffi.NULL if array is None else self.ffi.cast("void *", array.ctypes.data)


def load_library(package: Path, name: str) -> tuple[Library | None, str | None]:
    """``<package>/_<name>*.so`` bound through ``<package>/csrc/<name>.h``, or None and why it could not be loaded."""
    found = [package / f"_{name}{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    found = [p for p in found if p.exists()]
    if not found:
        return None, f"{package / f'_{name}*.so'} was not built (pip install -e . builds it; it needs a C compiler)"
    ffi = FFI()
    ffi.cdef((package / "csrc" / f"{name}.h").read_text())
    try:
        lib = ffi.dlopen(str(found[0]))
    except OSError as exc:  # a library built for another machine or left half-written
        return None, f"{found[0]} cannot be loaded ({exc}); rebuild it with pip install -e ."
    return Library(ffi, lib), None
