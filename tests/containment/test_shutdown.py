"""SIGTERM under load: every request the gateway admitted is in the usage ledger once the
process has exited, none twice, and every answer a client got is whole or a clean refusal."""

from __future__ import annotations

import signal

import pytest
from steady_load import NO_ANSWER, SteadyLoad


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_loses_nothing_from_the_ledger(make_gateway, workers):
    # A flush interval longer than the test: only the writes of the drain can save the usage.
    gateway = make_gateway(
        workers=workers, extra_env={"GATEWAY_USAGE_FLUSH_INTERVAL": "3600"}
    ).start()
    names = [f"client-{number}" for number in range(3)]
    keys = {name: gateway.wait_for_key(gateway.create_key(name)) for name in names}
    with SteadyLoad(gateway, list(keys.values()), clients_per_key=2) as load:
        load.wait_for(150)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(60) == 0
    # After the drain began, clients are refused, never cut off: no answer at all (connection
    # refused, or a keep-alive connection closed or reset before the request on it was read:
    # HTTP/1.1's race), or a 503. An answer that began and broke off is a failure.
    refusals = (NO_ANSWER, ": 503 ")
    for failure in load.failures:
        assert any(refusal in failure for refusal in refusals), failure
    ledger = {name: gateway.ledger_requests(name) for name in names}
    print(
        f"\n[containment] SIGTERM under load: {load.succeeded} answered whole, "
        f"{len(load.failures)} refused during the drain; ledger {sum(ledger.values())} requests"
    )
    assert ledger == {name: load.succeeded_by_key[keys[name]] for name in names}
    assert sum(ledger.values()) >= 150
    # Every process finished its drain: the workers (SIGTERM passed on) and serve itself.
    processes = 1 if workers == 1 else workers + 1
    assert gateway.log().count('"stopped; ') == processes
