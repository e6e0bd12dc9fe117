"""Fuzzing the live gateway with schemathesis, from openapi/gateway.yaml.

Real Envoy, the real gRPC server and the fake upstream. Cases are valid and invalid requests
(positive and negative generation) for every operation, with the client's key, a wrong key or
none. Goals: no 5xx caused by client input, every 4xx in the guide's error shape, every answer
as described, and the gateway alive and serving afterwards. Bounded: a fixed number of cases
per operation and a deadline.
"""

from __future__ import annotations

import fuzz_stats
import httpx
import pytest
import schemathesis
from gateway_openapi import SPEC_PATH, validate_schema
from hypothesis import HealthCheck, settings
from openai_shape import chat_body
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CASES_PER_OPERATION = 600
# Generous for a loaded 2-core machine; the suite's whole fuzzing budget is about 2 minutes.
DEADLINE_SECONDS = 90

schema = schemathesis.openapi.from_path(str(SPEC_PATH))
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=CASES_PER_OPERATION,
    # The key is chosen below: random ones would stop nearly every case at authentication.
    with_security_parameters=False,
)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])


def error_shape(ctx: object, response: object, case: object) -> bool:
    """Every 4xx is the guide's `{"error": {...}}` with `code` = the HTTP status."""
    status = response.status_code  # type: ignore[attr-defined]
    if status >= 400:
        content_type = response.headers.get("content-type", [""])  # type: ignore[attr-defined]
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/json"), content_type
        body = response.json()  # type: ignore[attr-defined]
        validate_schema("ErrorResponse", body)
        assert body["error"]["code"] == status, body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    error_shape,
]


@pytest.fixture(scope="module")
def fuzz_base(gateway, api_key) -> str:
    fuzz_stats.started()
    return gateway.url


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
    print_blob=True,
)
def test_fuzz_operation(case, fuzz_base, api_key) -> None:
    if fuzz_stats.elapsed() > DEADLINE_SECONDS:
        pytest.skip("fuzzing deadline reached")  # bounded in time, whatever the machine
    # Most cases carry the valid key and name a catalog model, so that they get past
    # authentication and the catalog to the request rules and the upstream.
    number = sum(fuzz_stats.CASES.values())
    key = {0: None, 1: "sk-not-a-valid-key-0123456789"}.get(number % 8, api_key)
    case.headers = {**(case.headers or {})}
    if key is not None:
        case.headers["Authorization"] = f"Bearer {key}"
    if number % 3:
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = "gpt-4o"
        if isinstance((case.path_parameters or {}).get("model"), str):
            case.path_parameters["model"] = "gpt-4o"
    response = case.call_and_validate(base_url=fuzz_base, checks=CHECKS, timeout=30)
    fuzz_stats.count(case.operation.label, response.status_code)


def test_fuzzing_ran_enough_cases_and_the_gateway_still_serves(gateway, api_key) -> None:
    total = sum(fuzz_stats.CASES.values())
    assert total >= 1000, fuzz_stats.CASES
    auth = {"authorization": f"Bearer {api_key}"}
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert gateway.process is not None and gateway.process.poll() is None
