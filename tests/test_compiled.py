"""The compiled parts' bindings: each C interface is declared once, in service/<package>/csrc/<part>.h, which the C
includes (so the compiler checks the definitions) and cffi reads (so Python calls are checked), and the built library
has it all."""

import re

import pytest

from service.compiled import load_library
from tests.conftest import ROOT

PARTS = ["fsrcnn", "rle_deflate", "png_unfilter"]
PACKAGE = {"fsrcnn": ROOT / "service" / "runtime", "rle_deflate": ROOT / "service" / "imageio"}
PACKAGE["png_unfilter"] = PACKAGE["rle_deflate"]


def loaded(part: str):
    library, why_not = load_library(PACKAGE[part], part)
    if library is None:
        pytest.skip(why_not)
    return library


@pytest.mark.parametrize("part", PARTS)
def test_the_c_source_is_compiled_against_its_header(part):
    source = (PACKAGE[part] / "csrc" / f"{part}.c").read_text()
    assert f'#include "{part}.h"' in source


@pytest.mark.parametrize("part", PARTS)
def test_every_function_the_header_declares_is_in_the_built_library(part):
    library = loaded(part)
    declared = re.findall(r"^\w[\w\s*]*?\b(\w+)\(", (PACKAGE[part] / "csrc" / f"{part}.h").read_text(), re.MULTILINE)
    assert declared and set(declared) <= set(dir(library.lib))
    for name in declared:
        assert callable(getattr(library.lib, name))  # AttributeError where the library lacks the symbol


def test_a_call_with_the_wrong_arguments_is_a_type_error_not_a_crash():
    library = loaded("fsrcnn")
    with pytest.raises(TypeError):
        library.lib.fsrcnn_forward(library.lib.FSRCNN_AVX2, library.ffi.NULL)  # 15 arguments declared
    with pytest.raises(TypeError):
        library.lib.fsrcnn_isa_supported(1.5)  # an int declared
    with pytest.raises(TypeError):
        library.lib.fsrcnn_block_sizes(1, 4096, 4)  # an int * declared, a bare address given


def test_the_layer_struct_has_the_fields_the_network_fills():
    library = loaded("fsrcnn")
    fields = [name for name, _ in library.ffi.typeof("FsrcnnLayer").fields]
    assert fields == ["weight", "bias", "slope", "cin", "cout", "block", "k"]
