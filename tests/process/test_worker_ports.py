"""The loopback ports a worker pool picks for its workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from typegpt_gateway.process import workers


class _OfferedSocket:
    """A socket whose bind to port 0 gets the next port of a script, as the kernel would."""

    def __init__(self, offers: Iterator[int]) -> None:
        self._port = next(offers)

    def __enter__(self) -> _OfferedSocket:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        assert address == (workers.WORKER_HOST, 0)

    def getsockname(self) -> tuple[str, int]:
        return (workers.WORKER_HOST, self._port)


def test_the_gateways_own_ports_are_never_given_to_a_worker(monkeypatch: pytest.MonkeyPatch):
    # The kernel offers a port the gateway's Envoy will bind once the workers are up (it is
    # free until then): a worker on it made Envoy fail to start.
    offers = iter([7000, 50051, 41001, 9464, 41002])
    monkeypatch.setattr(workers.socket, "socket", lambda: _OfferedSocket(offers))
    assert workers._free_ports(2, avoid=(7000, 50051, 9464, 0)) == [41001, 41002]


def test_free_ports_are_distinct_and_bindable():
    ports = workers._free_ports(4)
    assert len(set(ports)) == 4 and all(0 < port < 65536 for port in ports)
