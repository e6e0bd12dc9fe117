"""Several workers' expositions merged into one, each sample labelled with its worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from typegpt_gateway.ops.metrics_merge import merge


def _exposition(requests: int) -> str:
    registry = CollectorRegistry()
    Counter("demo_requests", "Requests.", ("key",), registry=registry).labels("a").inc(requests)
    Gauge("demo_up", "Up.", registry=registry).set_function(lambda: 1.0)
    Histogram("demo_seconds", "Time.", buckets=(1.0,), registry=registry).observe(0.5)
    return generate_latest(registry).decode()


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_every_workers_samples_with_its_worker_label() -> None:
    samples = _samples(merge([("0", _exposition(3)), ("1", _exposition(5))]))
    assert samples[("demo_requests_total", (("key", "a"), ("worker", "0")))] == 3
    assert samples[("demo_requests_total", (("key", "a"), ("worker", "1")))] == 5
    assert samples[("demo_up", (("worker", "1"),))] == 1.0
    assert samples[("demo_seconds_bucket", (("le", "1.0"), ("worker", "0")))] == 1
    assert samples[("typegpt_gateway_worker_up", (("worker", "0"),))] == 1.0


def test_a_worker_that_did_not_answer_is_down_and_adds_nothing() -> None:
    samples = _samples(merge([("0", _exposition(3)), ("1", None)]))
    assert samples[("typegpt_gateway_worker_up", (("worker", "1"),))] == 0.0
    assert not any(
        ("worker", "1") in labels for name, labels in samples if name != "typegpt_gateway_worker_up"
    )


def test_one_help_and_type_line_per_family() -> None:
    text = merge([("0", _exposition(1)), ("1", _exposition(2))]).decode()
    assert text.count("# TYPE demo_requests_total counter") == 1
    assert text.count("# TYPE demo_seconds histogram") == 1
