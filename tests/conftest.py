from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_upstream import FakeUpstream
from gateway_process import SCRIPTED_FAILURES, Gateway
from servers import PostgresServer, RedisServer

from typegpt_gateway.keystore.postgres import PostgresKeyStore
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.keystore.store import Store


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
    # Every scripted upstream failure reaches the client as it is: no retry absorbs it and no
    # cooldown outlives the test. test_resilience.py covers retries and cooldowns.
    gw = Gateway(
        tmp_path_factory.mktemp("gateway"), upstream.base_url, extra_env=SCRIPTED_FAILURES
    ).start()
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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server shared by the session (tests flush what they need)."""
    yield from _throwaway(RedisServer())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL; each test takes a new database from it."""
    yield from _throwaway(PostgresServer())


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Opens connections to one store (several, as the CLI and the server do): SQLite, then a
    real PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "keys.db"

        def factory() -> Store:
            return KeyStore(path)
    else:
        url = request.getfixturevalue("postgres_server").new_database()

        def factory() -> Store:
            return PostgresKeyStore(url)

    opened: list[Store] = []

    def opening() -> Store:
        opened.append(factory())
        return opened[-1]

    yield opening
    for store in opened:
        store.close()


def _throwaway(server: RedisServer | PostgresServer) -> Iterator:
    try:
        yield server.start()
    finally:
        server.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import fuzz_stats  # filled in by test_fuzz.py, when it ran

    text = fuzz_stats.summary()
    if text:
        terminalreporter.write_sep("-", "fuzzing")
        terminalreporter.write_line(text)
