from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_upstream import FakeUpstream
from gateway_process import Gateway


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    # Each test starts with no scripted replies and no recorded requests.
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset_state()


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"), upstream.base_url).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def api_key(gateway: Gateway) -> str:
    return gateway.create_key("test-client")


@pytest.fixture
def make_gateway(upstream: FakeUpstream, tmp_path: Path) -> Iterator[type[Gateway]]:
    """Starts extra gateways with their own settings; each is stopped after the test."""
    started: list[Gateway] = []

    def factory(**kwargs: object) -> Gateway:
        kwargs.setdefault("upstream_url", upstream.base_url)
        gw = Gateway(tmp_path / f"gw{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(gw)
        return gw

    yield factory  # type: ignore[misc]
    for gw in started:
        gw.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import fuzz_stats  # filled in by test_fuzz.py, when it ran

    text = fuzz_stats.summary()
    if text:
        terminalreporter.write_sep("-", "fuzzing")
        terminalreporter.write_line(text)
