"""The loopback ports picked now for listeners that bind later (workers, and the tests'
servers): outside the kernel's ephemeral range, so no outgoing connection takes one meanwhile."""

from __future__ import annotations

import socket

import pytest

from typegpt_gateway.process import ports, workers
from typegpt_gateway.settings import Settings


def test_the_ephemeral_range_is_read_from_the_kernels_text_or_defaults():
    assert ports.ephemeral_range("32768\t60999\n") == (32768, 60999)
    assert ports.ephemeral_range("1024 65535") == (1024, 65535)
    for nonsense in (None, "", "a b", "60999 32768", "0 100", "1 2 3", "5 70000"):
        assert ports.ephemeral_range(nonsense) == ports.DEFAULT_EPHEMERAL


def test_candidates_leave_out_the_ephemeral_range_and_the_well_known_ports():
    found = ports.candidates((32768, 60999))
    assert found[0] == ports.LOWEST and found[-1] == 65535
    assert 32767 in found and 61000 in found
    assert not any(32768 <= port <= 60999 for port in found)
    assert ports.candidates((1024, 65535)) == []


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    low, high = ports.ephemeral_range(ports.EPHEMERAL_RANGE_FILE.read_text())
    picked = ports.free_ports(6)
    assert len(set(picked)) == 6
    for port in picked:
        assert not low <= port <= high
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_one_process_does_not_hand_out_a_port_twice_before_it_is_bound():
    # The harness picks a port for a server that binds it only later: the next picks must
    # not offer it again although it is free meanwhile.
    first = ports.free_ports(1)
    assert not set(first) & set(ports.free_ports(50))


def test_a_port_someone_holds_or_the_caller_will_bind_is_never_picked(
    monkeypatch: pytest.MonkeyPatch,
):
    # Two candidates: one held by another listener, one the caller avoids (the gateway's own
    # Envoy port, free until Envoy binds it after the workers start).
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.free_ports(1)[0]))
        taken = held.getsockname()[1]
        avoided = ports.free_ports(1)[0]
        monkeypatch.setattr(ports, "_TURNS", ports._Turns())
        monkeypatch.setattr(ports, "candidates", lambda _: [taken, avoided])
        assert ports.free_ports(1) == [avoided]
        # Neither will do: the kernel's offer is the fallback.
        (offered,) = ports.free_ports(1, avoid=(avoided,))
        assert offered not in (taken, avoided, 0)


def test_without_candidates_the_kernel_offers_ports(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ports, "_TURNS", ports._Turns())
    monkeypatch.setattr(ports, "candidates", lambda _: [])
    picked = ports.free_ports(3)
    assert len(set(picked)) == 3 and all(port > 0 for port in picked)


def test_a_pool_never_gives_a_worker_the_gateways_own_ports(monkeypatch: pytest.MonkeyPatch):
    # The gateway's own ports are free until Envoy binds them after the workers start (a
    # worker on one made Envoy fail to start); they come first among the candidates here.
    own = ports.free_ports(3)
    others = ports.free_ports(4)
    monkeypatch.setattr(ports, "_TURNS", ports._Turns())
    monkeypatch.setattr(ports, "candidates", lambda _: [*own, *others])
    settings = Settings(http_port=own[0], grpc_port=own[1], metrics_port=own[2], workers=2)
    pool = workers.WorkerPool(settings)
    given = [port for worker in pool.workers for port in (worker.grpc_port, worker.metrics_port)]
    assert sorted(given) == sorted(others)
