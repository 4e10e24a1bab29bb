"""Builds the one compiled part, ``service/fsrcnn.c`` (everything else is in pyproject.toml).

It is a plain shared library that ``service.native`` loads with ctypes, named like an extension module so that
pip builds it with the package (in place for ``pip install -e .``). It is optional: where it cannot be compiled
(no C compiler), pip installs the rest and the service runs every model on ONNX Runtime.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service._fsrcnn",
            sources=["service/fsrcnn.c"],
            # No fused multiply-add where C has two operations: 8-bit pixels are rounded as numpy rounds them.
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
