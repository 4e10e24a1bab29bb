"""Schemathesis against the service's own OpenAPI schema: no generated request gets a 5xx.

Positive cases (schema-valid: scales, formats, qualities, image bodies in every declared media type and as
multipart) and negative ones (values outside the schema) for every operation, at least 500 in all, each
checked for: no server error, a documented status code, the documented content type and response schema.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .helpers import assert_clean_log

MIN_CASES = 500
EXAMPLES = {("POST /v1/upscale", "positive"): 400, ("POST /v1/upscale", "negative"): 200}
DEFAULT_EXAMPLES = 25  # operations without parameters have one positive case and no negative one
TIME_BUDGET_S = 90  # hard stop per operation and mode, far above what it takes
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(url: str, operation, mode, session: requests.Session, statuses: Counter, failures: list[str]) -> None:
    """Run the generated cases of one operation in one mode, bounded by count and by time."""
    stop_at = time.monotonic() + TIME_BUDGET_S

    @settings(
        max_examples=EXAMPLES.get((operation.label, mode.value), DEFAULT_EXAMPLES),
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        if time.monotonic() > stop_at:
            return
        response = case.call(base_url=url, session=session, timeout=60)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # collect them all, report at the end
            failures.append(f"{operation.label} [{mode.value}] -> {response.status_code}: {exc}"[:800])

    run()


def test_schemathesis_finds_no_server_error(rserver, figures):
    schema = schemathesis.openapi.from_url(f"{rserver.url}/openapi.json")
    statuses: Counter = Counter()
    failures: list[str] = []
    started = time.monotonic()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            has_inputs = bool(operation.body) or any(True for _ in operation.iter_parameters())
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                if mode == schemathesis.GenerationMode.NEGATIVE and not has_inputs:
                    continue  # nothing to get wrong
                fuzz(rserver.url, operation, mode, session, statuses, failures)
    total = sum(statuses.values())
    figures["fuzz"] = {
        "cases": total,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "failures": len(failures),
        "seconds": round(time.monotonic() - started, 1),
    }
    assert not failures, "\n".join(failures[:10])
    assert total >= MIN_CASES, f"only {total} cases ran"
    assert figures["fuzz"]["5xx"] == 0
    assert_clean_log(rserver)


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_schema_and_docs_are_served(rclient, path):
    assert rclient.get(path).status_code == 200
