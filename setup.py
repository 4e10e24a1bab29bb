"""Builds the one compiled part, ``service/fsrcnn.c`` (everything else is in pyproject.toml).

It is a plain shared library that ``service.native`` loads with ctypes, named like an extension module so that
pip builds it with the package (in place for ``pip install -e .``). A build without a C compiler fails; the
service then still runs, on ONNX Runtime's CPU kernels.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service._fsrcnn",
            sources=["service/fsrcnn.c"],
            extra_compile_args=["-O3", "-std=c11"],
            py_limited_api=False,
        )
    ]
)
