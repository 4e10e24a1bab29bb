"""Builds the compiled parts (everything else is in pyproject.toml): ``service/runtime/csrc/fsrcnn.c``, the CPU
kernels, ``service/imageio/csrc/rle_deflate.c``, the PNG encoder's deflater, and
``service/imageio/csrc/png_unfilter.c``, the PNG reader's last step.

Each is a plain shared library that ``service.compiled`` loads with cffi through the part's header (its interface,
declared once), named like an extension module so that pip builds it with the package (in place for
``pip install -e .``). All are optional: where they cannot be
compiled (no C compiler), pip installs the rest, the service runs every model on ONNX Runtime, deflates PNGs
with ISA-L and reads them with Pillow.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.runtime._fsrcnn",
            sources=["service/runtime/csrc/fsrcnn.c"],
            depends=["service/runtime/csrc/fsrcnn.h"],
            # No fused multiply-add where C has two operations: 8-bit pixels are rounded as numpy rounds them.
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off"],
            optional=True,
        ),
        Extension(
            "service.imageio._rle_deflate",
            sources=["service/imageio/csrc/rle_deflate.c"],
            depends=["service/imageio/csrc/rle_deflate.h"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        ),
        Extension(
            "service.imageio._png_unfilter",
            sources=["service/imageio/csrc/png_unfilter.c"],
            depends=["service/imageio/csrc/png_unfilter.h"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        ),
    ]
)
