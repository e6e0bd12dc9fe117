"""What the gateway records of each request, in process: its request id, and the rules of its
log line and its metrics (one Exchange per request, finished as the RPC ends)."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.ops import metrics, observe

UUID_LENGTH = 36
ROUTE = "ChatService/CreateChatCompletionHttp"


@pytest.mark.parametrize(
    ("metadata", "honoured"),
    [
        ([("x-request-id", "abc-123")], True),
        ([("x-request-id", "")], False),
        ([("x-request-id", "x" * 201)], False),
        ([("x-request-id", "tab\there")], False),
        ([("x-request-id", "é")], False),
        ([("other", "abc")], False),
        (None, False),
    ],
)
def test_request_id_from(metadata, honoured):
    request_id = observe.request_id_from(metadata)
    if honoured:
        assert request_id == metadata[0][1]
    else:
        assert len(request_id) == UUID_LENGTH


def _unique(prefix: str) -> str:
    # Metrics are the process's own registry: each test counts under names of its own.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _requests(model: str, key: str, status: int) -> float:
    labels = {"route": ROUTE, "model": model, "key": key, "status": str(status)}
    return metrics.REGISTRY.get_sample_value("typegpt_gateway_requests_total", labels) or 0.0


def _series_naming(text: str) -> list[str]:
    return [
        f"{metric.name}{sample.labels}"
        for metric in metrics.REGISTRY.collect()
        for sample in metric.samples
        if any(text in value for value in sample.labels.values())
    ]


def test_a_model_outside_the_catalog_makes_no_series_and_is_cut_in_the_log(caplog):
    key = _unique("prober")
    probe = _unique("probe")
    names = [f"{probe}-{number}" for number in range(200)] + [probe + "m" * (1024 * 1024)]
    with caplog.at_level(logging.INFO, observe.request_log.name):
        for name in names:
            exchange = observe.Exchange(ROUTE, observe.new_request_id(), key=key)
            exchange.asked_for(name, known=False)
            exchange.failed(GatewayError(404, "The model does not exist."))
            exchange.finish()
    logged = [record.model for record in caplog.records if record.name == observe.request_log.name]
    assert logged == [name[: observe.MAX_LOGGED_MODEL_CHARS] for name in names]
    assert _requests(observe.UNKNOWN_MODEL, key, 404) == len(names)
    assert not _series_naming(probe)


def test_a_model_in_the_catalog_is_its_own_label():
    key, model = _unique("client"), _unique("model")
    exchange = observe.Exchange(ROUTE, observe.new_request_id(), key=key)
    exchange.asked_for(model, known=True)
    exchange.finish()
    assert _requests(model, key, 200) == 1
    assert _requests(observe.UNKNOWN_MODEL, key, 200) == 0


def test_time_to_first_byte_is_observed_only_for_answers_that_succeed():
    model = _unique("model")
    for status in (200, 502):
        exchange = observe.Exchange(ROUTE, observe.new_request_id())
        exchange.asked_for(model, known=True)
        exchange.sent_first_byte()
        if status != 200:
            exchange.failed(GatewayError(status, "The upstream failed."))
        exchange.finish()
    labels = {"route": ROUTE, "model": model}
    count = metrics.REGISTRY.get_sample_value
    assert count("typegpt_gateway_request_duration_seconds_count", labels) == 2
    assert count("typegpt_gateway_time_to_first_byte_seconds_count", labels) == 1


def test_a_logged_body_is_cut_and_what_is_not_utf8_replaced():
    body = b"\xe9" + b"x" * observe.MAX_LOGGED_BODY_BYTES
    fields = observe.Exchange(ROUTE, "cut", body=body).log_fields(time.monotonic())
    assert fields["request_body"] == "\ufffd" + "x" * (observe.MAX_LOGGED_BODY_BYTES - 1)
    assert "request_body" not in observe.Exchange(ROUTE, "none").log_fields(time.monotonic())
