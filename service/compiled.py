"""The service's optional compiled parts: plain C libraries that setup.py builds next to this file.

Each is named like an extension module (``service/_<name>.cpython-311-x86_64-linux-gnu.so``) so that pip builds it
with the package, in place for ``pip install -e .``, and is loaded with ctypes, which releases the GIL for every
call. Where one was not built (no C compiler) or cannot be loaded, the caller gets the reason and keeps its
other path.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path

__all__ = ["load_library"]

_HERE = Path(__file__).parent


Signature = tuple[list, type | None]  # a C function's argument types and its return type, as ctypes takes them


def load_library(name: str, functions: dict[str, Signature]) -> tuple[ctypes.CDLL | None, str | None]:
    """``service/_<name>*.so`` loaded with the signatures of its ``functions`` set, or None and why it could not
    be loaded."""
    found = [_HERE / f"_{name}{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    found = [p for p in found if p.exists()]
    if not found:
        return None, f"{_HERE / f'_{name}*.so'} was not built (pip install -e . builds it; it needs a C compiler)"
    try:
        lib = ctypes.CDLL(str(found[0]))
    except OSError as exc:  # a library built for another machine or left half-written
        return None, f"{found[0]} cannot be loaded ({exc}); rebuild it with pip install -e ."
    for function, (argtypes, restype) in functions.items():
        getattr(lib, function).argtypes, getattr(lib, function).restype = argtypes, restype
    return lib, None
