"""Fixtures of the reliability suite: one shared server with tight limits, and the figures it reports."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, serving

# The limits of the shared server: small enough that bombs and big images are refused quickly.
LIMITS = {
    "tile": 32,
    "max_batch": 8,
    "max_body_bytes": 4_000_000,
    "max_input_pixels": 1_048_576,
    "max_output_pixels": 16_777_216,
    "request_timeout_s": 60,
}


@pytest.fixture(scope="package")
def rserved(tmp_path_factory) -> Iterator[tuple[Server, httpx.Client]]:
    with serving(tmp_path_factory.mktemp("reliability"), **LIMITS) as pair:
        yield pair


@pytest.fixture(scope="package")
def rserver(rserved) -> Server:
    return rserved[0]


@pytest.fixture(scope="package")
def rclient(rserved) -> httpx.Client:
    return rserved[1]


@pytest.fixture(scope="session")
def figures() -> Iterator[dict]:
    """What the tests measured, by section; written to $RELIABILITY_RESULTS (merged) when that is set."""
    data: dict = {}
    yield data
    path = os.environ.get("RELIABILITY_RESULTS")
    if path and data:
        target = Path(path)
        merged = json.loads(target.read_text()) if target.exists() else {}
        merged.update(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
