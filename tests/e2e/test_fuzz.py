"""Fuzzing the live gateway with schemathesis, from openapi/gateway.yaml.

Real Envoy, the real gRPC server and the fake upstream, in a gateway of this module's own (the
admin operations create, change and revoke keys). Cases are valid and invalid requests
(positive and negative generation) for every operation, with the key the operation needs (the
client's, or the admin key for the admin API), a wrong one or none. Goals: no 5xx caused by client input, every 4xx in the guide's error shape, every answer
as described, and the gateway alive and serving afterwards. Bounded: a fixed number of cases
per operation and a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator

import fuzz_stats
import httpx
import pytest
import schemathesis
from fake_upstream import FakeUpstream
from gateway_openapi import SPEC_PATH, validate_schema
from gateway_process import ADMIN_KEY, SCRIPTED_FAILURES, Gateway, running
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

CASES_PER_OPERATION = 300
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
def fuzzed(upstream: FakeUpstream, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    with running(
        tmp_path_factory.mktemp("fuzzed"), upstream.base_url, extra_env=SCRIPTED_FAILURES
    ) as gw:
        key = gw.wait_for_key(gw.create_key("fuzz-client"))
        # A key the admin cases read and change; DELETE cases never aim at it.
        gw.create_key("fuzz-target")
        fuzz_stats.started()
        yield gw, key


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
    print_blob=True,
)
def test_fuzz_operation(case, fuzzed) -> None:
    if fuzz_stats.elapsed() > DEADLINE_SECONDS:
        pytest.skip("fuzzing deadline reached")  # bounded in time, whatever the machine
    gateway, api_key = fuzzed
    admin = case.operation.path.startswith("/v1/admin/")
    # Most cases carry the key the operation needs and name a catalog model or a live key, so
    # that they get past authentication and the catalog to the rules and the upstream or store.
    number = sum(fuzz_stats.CASES.values())
    wrong = {0: None, 1: "sk-not-a-valid-key-0123456789", 2: api_key if admin else None}
    key = wrong.get(number % 8, ADMIN_KEY if admin else api_key)
    case.headers = {**(case.headers or {})}
    if key is not None:
        case.headers["Authorization"] = f"Bearer {key}"
    if number % 3:
        _aim_at_real_things(case)
    response = case.call_and_validate(base_url=gateway.url, checks=CHECKS, timeout=30)
    fuzz_stats.count(case.operation.label, response.status_code)


def _aim_at_real_things(case: schemathesis.Case) -> None:
    """A catalog model in place of a generated one; the live key `fuzz-target` in place of a
    generated name, except for revoking."""
    body = case.body if isinstance(case.body, dict) else {}
    path = case.path_parameters or {}
    if isinstance(body.get("model"), str):
        body["model"] = "gpt-4o"
    if isinstance(path.get("model"), str):
        path["model"] = "gpt-4o"
    if isinstance(body.get("models"), list):
        body["models"] = ["gpt-4o"]
    if isinstance(path.get("name"), str) and case.method.upper() != "DELETE":
        path["name"] = "fuzz-target"


def test_fuzzing_ran_enough_cases_and_the_gateway_still_serves(fuzzed) -> None:
    gateway, api_key = fuzzed
    total = sum(fuzz_stats.CASES.values())
    assert total >= 1000, fuzz_stats.CASES
    assert {label.split()[0] for label in fuzz_stats.CASES} >= {"POST", "GET", "PATCH", "DELETE"}
    auth = {"authorization": f"Bearer {api_key}"}
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert gateway.process is not None and gateway.process.poll() is None
