"""The key stores — SQLite and a real PostgreSQL — held to the same behaviour, the SQLite
migration from the first release's schema, backups, the stores' readiness check, usage batch
ids, store calls bounded however the database holds them up, and the server's cache of keys
over them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from counted_store import CountedReads
from old_store_schemas import FIRST_SCHEMA, LEDGER_SCHEMA_POSTGRES, LEDGER_SCHEMA_SQLITE

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.cache import KeyCache
from typegpt_gateway.keystore.postgres import PostgresKeyStore
from typegpt_gateway.keystore.records import hash_key
from typegpt_gateway.keystore.sql import key_activity_query, usage_totals_query
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.keystore.store import (
    BackupUnsupportedError,
    KeyActivity,
    KeyExistsError,
    KeyNotFoundError,
    PeriodUse,
    Store,
    UsageRow,
    UsageTotal,
)
from typegpt_gateway.process.readiness import key_store_check

DAY = dt.date(2026, 5, 1)


def test_create_get_update_revoke(store_factory):
    store = store_factory()
    record, key = store.create("alice", models=["o3", "gpt-4o"], rpm=3, tpm=1000)
    assert record.key_hash == hash_key(key)
    got = store.get("alice")
    assert (got.rpm, got.tpm, got.max_concurrent, got.budget_tokens) == (3, 1000, None, None)
    assert got.models == ("gpt-4o", "o3")
    assert store.by_hash()[hash_key(key)].name == "alice"

    updated = store.update("alice", rpm=None, max_concurrent=2, budget_tokens=500)
    assert (updated.rpm, updated.tpm, updated.max_concurrent) == (None, 1000, 2)
    assert (updated.budget_tokens, updated.budget_period) == (500, "month")
    assert store.update("alice", budget_period="day", models=None).models is None
    assert store.get("alice").budget_period == "day"
    assert store.get("alice").key_hash == record.key_hash  # same key, new limits

    with pytest.raises(ValueError, match="rpm"):
        store.update("alice", rpm=0)
    with pytest.raises(ValueError, match="Unknown limit: key_hash"):
        store.update("alice", key_hash=b"x")
    with pytest.raises(KeyExistsError):
        store.create("alice")
    store.revoke("alice")
    with pytest.raises(KeyNotFoundError):
        store.get("alice")
    with pytest.raises(KeyNotFoundError):
        store.update("alice", rpm=1)
    assert store.create("alice")[0].name == "alice"  # a revoked name can be reused
    assert [r.name for r in store.records()] == ["alice", "alice"]


def test_other_connections_see_changes_through_data_version(store_factory):
    server, cli = store_factory(), store_factory()
    version = server.data_version()
    cli.create("bob")
    assert server.data_version() != version
    version = server.data_version()
    cli.update("bob", rpm=7)
    assert server.data_version() != version
    assert server.get("bob").rpm == 7
    # The server's own writes (an admin API) count too.
    version = server.data_version()
    server.update("bob", rpm=8)
    assert server.data_version() != version


def test_usage_adds_up_per_day_and_model(store_factory):
    store = store_factory()
    store.add_usage(
        [
            ("k", UsageRow(DAY, "gpt-4o", 1, 10, 20, 0, 700, 0, 1)),
            ("k", UsageRow(DAY, "o3", 1, 1, 2, 1, 0, 1, 0)),
            ("other", UsageRow(DAY, "gpt-4o", 9, 9, 9, 9)),
        ]
    )
    store.add_usage([("k", UsageRow(DAY, "gpt-4o", 2, 5, 5, 1, 2**40, 1, 1))])
    store.add_usage([("k", UsageRow(DAY + dt.timedelta(days=1), "gpt-4o", 1, 1, 1, 0))])
    assert store.usage("k") == [
        UsageRow(DAY, "gpt-4o", 3, 15, 25, 1, 2**40 + 700, 1, 2),
        UsageRow(DAY, "o3", 1, 1, 2, 1, 0, 1, 0),
        UsageRow(DAY + dt.timedelta(days=1), "gpt-4o", 1, 1, 1, 0),
    ]
    assert store.usage("k", since=DAY + dt.timedelta(days=1)) == [
        UsageRow(DAY + dt.timedelta(days=1), "gpt-4o", 1, 1, 1, 0)
    ]
    assert store.usage("nobody") == []
    store.add_usage([])


def test_usage_totals_sum_the_whole_ledger_per_group(store_factory):
    store = store_factory()
    later = DAY + dt.timedelta(days=1)
    store.add_usage(
        [
            ("a", UsageRow(DAY, "gpt-4o", 1, 10, 20, 0, 2**40, 0, 1)),
            ("a", UsageRow(DAY, "o3", 2, 1, 2, 1, 5, 0, 0)),
            ("b", UsageRow(DAY, "gpt-4o", 3, 100, 200, 0, 7, 1, 0)),
            ("b", UsageRow(later, "gpt-4o", 4, 1000, 2000, 2, 11, 0, 2)),
        ]
    )
    assert store.usage_totals(["day"]) == [
        UsageTotal(DAY, None, None, 6, 111, 222, 1, 2**40 + 12, 1, 1),
        UsageTotal(later, None, None, 4, 1000, 2000, 2, 11, 0, 2),
    ]
    # Ordered by day, key, model whatever the order asked for.
    assert store.usage_totals(["model", "key"]) == [
        UsageTotal(None, "a", "gpt-4o", 1, 10, 20, 0, 2**40, 0, 1),
        UsageTotal(None, "a", "o3", 2, 1, 2, 1, 5, 0, 0),
        UsageTotal(None, "b", "gpt-4o", 7, 1100, 2200, 2, 18, 1, 2),
    ]
    assert store.usage_totals(["model", "day"], since=later) == [
        UsageTotal(later, None, "gpt-4o", 4, 1000, 2000, 2, 11, 0, 2)
    ]
    assert store.usage_totals(["key"], until=DAY) == [
        UsageTotal(None, "a", None, 3, 11, 22, 1, 2**40 + 5, 0, 1),
        UsageTotal(None, "b", None, 3, 100, 200, 0, 7, 1, 0),
    ]
    assert store.usage_totals(["day", "model"], key="a", since=DAY, until=DAY) == [
        UsageTotal(DAY, None, "gpt-4o", 1, 10, 20, 0, 2**40, 0, 1),
        UsageTotal(DAY, None, "o3", 2, 1, 2, 1, 5, 0, 0),
    ]
    assert store.usage_totals(["day"], key="nobody") == []
    assert store.usage_totals(["day"], since=later + dt.timedelta(days=1)) == []


def test_key_activity_has_each_names_last_day_and_use_since_each_start(store_factory):
    store = store_factory()
    for name in ("busy", "idle", "old", "again"):
        store.create(name)
    store.revoke("again")
    store.create("again")  # a name's ledger is that of every key that had it
    month, today = DAY, DAY + dt.timedelta(days=9)
    store.add_usage(
        [
            ("busy", UsageRow(month - dt.timedelta(days=1), "gpt-4o", 1, 1000, 1000, 0, 99)),
            ("busy", UsageRow(month, "gpt-4o", 1, 10, 20, 0, 2**40)),
            ("busy", UsageRow(today, "gpt-4o", 2, 1, 2, 0, 5, 1)),
            ("busy", UsageRow(today, "o3", 1, 3, 4, 0, 0, 1)),
            ("old", UsageRow(month - dt.timedelta(days=40), "o3", 1, 5, 5, 0, 7)),
            ("again", UsageRow(month, "o3", 1, 5, 6, 0, 8)),
            ("no-key", UsageRow(today, "o3", 1, 5, 6, 0, 8)),  # not a key's name
        ]
    )
    starts = {"day": today, "month": month}
    assert store.key_activity(starts) == {
        "busy": KeyActivity(today, {"day": PeriodUse(10, 5), "month": PeriodUse(40, 2**40 + 5)}),
        "old": KeyActivity(
            month - dt.timedelta(days=40), {"day": PeriodUse(), "month": PeriodUse()}
        ),
        "again": KeyActivity(month, {"day": PeriodUse(), "month": PeriodUse(11, 8)}),
    }
    assert store.key_activity(starts, "busy") == {"busy": store.key_activity(starts)["busy"]}
    assert store.key_activity(starts, "idle") == {}
    assert store.key_activity(starts, "nobody") == {}


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (usage_totals_query(["day"], DAY, DAY, None), "INDEX usage_day (day>? AND day<?)"),
        # Since a day, to this day: still a range of usage_day, not a scan of the ledger.
        (
            usage_totals_query(["key", "model"], DAY, None, None),
            "INDEX usage_day (day>? AND day<?)",
        ),
        (
            usage_totals_query(["day", "model"], DAY, DAY, "k"),
            "INDEX sqlite_autoindex_usage_1 (key_name=? AND day>? AND day<?)",
        ),
        (
            key_activity_query({"day": DAY, "month": DAY}, None),
            "INDEX sqlite_autoindex_usage_1 (key_name=? AND day>?)",
        ),
    ],
)
def test_sqlite_usage_queries_read_through_the_indexes_they_name(tmp_path, query, index):
    """The admin API's ledger queries read a range of an index, never the whole ledger (the
    plan SQLite makes without statistics, as the gateway never gathers any)."""
    KeyStore(tmp_path / "keys.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "keys.db")) as db:
        plan = [step[-1] for step in db.execute(f"EXPLAIN QUERY PLAN {query[0]}", query[1])]
    assert any(step.startswith("SEARCH") and index in step for step in plan), plan
    assert not any(step.startswith(("SCAN usage", "SCAN u ")) for step in plan), plan


def test_concurrent_writers_lose_nothing(store_factory):
    stores = [store_factory() for _ in range(3)]

    def write(store: Store) -> None:
        for _ in range(20):
            store.add_usage([("k", UsageRow(DAY, "gpt-4o", 1, 2, 3, 0))])

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert stores[0].usage("k") == [UsageRow(DAY, "gpt-4o", 60, 120, 180, 0)]


def test_sqlite_store_from_the_first_release_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(FIRST_SCHEMA)
    old.execute(
        "INSERT INTO keys (name, key_hash, prefix, models, rpm, created_at) "
        "VALUES ('legacy', ?, 'sk-legacy', '[\"gpt-4o\"]', 60, 1.0)",
        (hash_key("sk-legacy-key"),),
    )
    old.commit()
    old.close()

    store = KeyStore(path)
    try:
        record = store.by_hash()[hash_key("sk-legacy-key")]
        assert (record.name, record.models, record.rpm) == ("legacy", ("gpt-4o",), 60)
        assert (record.tpm, record.max_concurrent, record.budget_tokens) == (None, None, None)
        assert store.update("legacy", tpm=100, budget_tokens=9).tpm == 100
        store.add_usage([("legacy", UsageRow(DAY, "gpt-4o", 1, 1, 1, 0))])
        assert len(store.usage("legacy")) == 1
    finally:
        store.close()
    # Opening again (the CLI and the server both do) changes nothing.
    again = KeyStore(path)
    try:
        assert again.get("legacy").budget_tokens == 9
    finally:
        again.close()


def test_postgres_schema_is_created_once_by_replicas_starting_together(postgres_server):
    url = postgres_server.new_database()
    stores: list[Store] = []
    errors: list[Exception] = []

    def open_one() -> None:
        try:
            stores.append(PostgresKeyStore(url))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == [] and len(stores) == 4
        stores[0].create("x")
        assert stores[3].get("x").name == "x"
    finally:
        for store in stores:
            store.close()


def test_postgres_reconnects_after_the_connection_drops(postgres_server):
    import psycopg

    url = postgres_server.new_database()
    store = PostgresKeyStore(url)
    try:
        store.create("y")
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(psycopg.OperationalError):
            store.get("y")  # the call that finds the connection dead fails...
        assert store.get("y").name == "y"  # ...and the next one reconnects
    finally:
        store.close()


def test_sqlite_backup_is_a_working_copy_and_postgres_names_its_tool(store_factory, tmp_path):
    store = store_factory()
    record, _ = store.create("kept", rpm=5)
    store.add_usage([("kept", UsageRow(DAY, "gpt-4o", requests=2))])
    copy = tmp_path / "copy.db"
    if not isinstance(store, KeyStore):
        with pytest.raises(BackupUnsupportedError, match="pg_dump"):
            store.backup(copy)
        assert not copy.exists()
        return
    store.backup(copy)
    restored = KeyStore(copy)
    try:
        assert restored.get("kept") == record
        assert restored.usage("kept") == [UsageRow(DAY, "gpt-4o", requests=2)]
    finally:
        restored.close()


def test_readiness_sees_a_sqlite_file_gone(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    check = key_store_check(store)
    try:
        assert asyncio.run(check()) is None
        (tmp_path / "keys.db").rename(tmp_path / "moved.db")
        assert "cannot be read" in (asyncio.run(check()) or "")
    finally:
        store.close()


def test_readiness_sees_a_lost_postgres_connection_and_its_return(postgres_server):
    import psycopg

    url = postgres_server.new_database()
    store = PostgresKeyStore(url)
    check = key_store_check(store)
    try:
        assert asyncio.run(check()) is None
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        problem = asyncio.run(check()) or ""
        assert problem.startswith("the key store cannot be reached (") and url not in problem
        assert asyncio.run(check()) is None  # reconnected
    finally:
        store.close()


# -- the ledger's batch ids: a batch is counted once however often it is written ---------------


def test_a_usage_batch_is_counted_once_however_often_it_is_written(store_factory):
    store, replica = store_factory(), store_factory()
    batch = [("k", UsageRow(DAY, "gpt-4o", 1, 10, 20, 0)), ("k", UsageRow(DAY, "o3", 1, 1, 2, 1))]
    assert store.add_usage(batch, batch_id="b1") is True
    assert store.add_usage(batch, batch_id="b1") is False  # a retry after an uncertain commit
    assert replica.add_usage(batch, batch_id="b1") is False  # the store remembers, not the process
    assert store.add_usage(batch[:1], batch_id="b2") is True
    assert store.usage("k") == [UsageRow(DAY, "gpt-4o", 2, 20, 40, 0), batch[1][1]]


def test_batch_ids_are_forgotten_after_the_retention(store_factory, monkeypatch):
    import typegpt_gateway.keystore.sql

    store = store_factory()
    row = [("k", UsageRow(DAY, "gpt-4o", requests=1))]
    assert store.add_usage(row, batch_id="old") is True
    # Every id is past the retention: the next write prunes them all, so the table stays small.
    monkeypatch.setattr(typegpt_gateway.keystore.sql, "BATCH_ID_RETENTION", -1.0)
    assert store.add_usage(row, batch_id="new") is True
    assert store.add_usage(row, batch_id="old") is True
    assert store.usage("k") == [UsageRow(DAY, "gpt-4o", requests=3)]


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_a_store_from_before_batch_ids_gains_them_on_open(dialect, request, tmp_path):
    old_usage = ("INSERT INTO usage (key_name, day, model, requests) VALUES ('k', ?, 'gpt-4o', 5)",)
    if dialect == "sqlite":
        path = tmp_path / "ledger.db"
        with contextlib.closing(sqlite3.connect(path)) as old:
            old.executescript(LEDGER_SCHEMA_SQLITE)
            old.execute(*old_usage, (DAY.isoformat(),))
            old.commit()

        def opening() -> Store:
            return KeyStore(path)
    else:
        import psycopg

        url = request.getfixturevalue("postgres_server").new_database()
        with psycopg.connect(url, autocommit=True) as old:
            old.execute(LEDGER_SCHEMA_POSTGRES)
            old.execute(old_usage[0].replace("?", "%s"), (DAY.isoformat(),))

        def opening() -> Store:
            return PostgresKeyStore(url)

    for _ in range(2):  # opening again (the CLI and the server both do) changes nothing
        with contextlib.closing(opening()) as store:
            row = [("k", UsageRow(DAY, "gpt-4o", requests=1))]
            store.add_usage(row, batch_id="once")
            assert store.add_usage(row, batch_id="once") is False
            assert store.usage("k") == [UsageRow(DAY, "gpt-4o", requests=6)]


# -- bounded store calls: a lock held elsewhere, a server that stops answering ------------------


def _call_within(seconds: float, call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """What `call` raised (None if nothing) and how long it took; the test fails when it is
    still running after `seconds` (whoever holds it up must then let it go)."""
    outcome: list[tuple[BaseException | None, float]] = []

    def run() -> None:
        start = time.monotonic()
        try:
            call()
        except Exception as exc:
            outcome.append((exc, time.monotonic() - start))
        else:
            outcome.append((None, time.monotonic() - start))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the store call was still waiting after {seconds} s"
    return outcome[0]


def test_sqlite_waits_a_bounded_time_for_another_writer(tmp_path):
    from typegpt_gateway.keystore.sql import LOCK_WAIT

    store = KeyStore(tmp_path / "keys.db")
    other = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the CLI, say, in the middle of a write
        error, took = _call_within(LOCK_WAIT + 30, lambda: store.create("blocked"))
        assert isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
        assert LOCK_WAIT - 1 < took < LOCK_WAIT + 10
        other.execute("ROLLBACK")
        assert store.create("free")[0].name == "free"
    finally:
        other.close()
        store.close()


@contextlib.contextmanager
def _table_locked(url: str, table: str) -> Iterator[None]:
    """Another session holds `table` locked (as a long migration or a stuck transaction would)."""
    import psycopg

    with psycopg.connect(url) as other:
        other.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            other.rollback()


def test_postgres_call_blocked_by_a_lock_fails_within_the_lock_timeout(postgres_server):
    import psycopg

    from typegpt_gateway.keystore.sql import LOCK_WAIT

    url = postgres_server.new_database()
    with contextlib.closing(PostgresKeyStore(url)) as store:
        with _table_locked(url, "keys"):
            error, took = _call_within(LOCK_WAIT + 30, lambda: store.create("blocked"))
            assert isinstance(error, psycopg.errors.LockNotAvailable), error
            assert LOCK_WAIT - 1 < took < LOCK_WAIT + 10
        # Nothing of the failed write stayed behind, and the connection goes on working.
        assert [record.name for record in store.records()] == []
        assert store.create("blocked")[0].name == "blocked"


def test_postgres_statement_timeout_applies_and_a_configured_one_is_kept(
    postgres_server, monkeypatch
):
    import psycopg

    import typegpt_gateway.keystore.postgres

    monkeypatch.setattr(typegpt_gateway.keystore.postgres, "STATEMENT_TIMEOUT", 1.0)
    url = postgres_server.new_database()
    # The operator's own lock_timeout (here in the URL) is kept: the statement timeout ends the
    # wait, not the gateway's lock timeout.
    with contextlib.closing(PostgresKeyStore(f"{url}?options=-c%20lock_timeout%3D60s")) as store:
        with _table_locked(url, "usage"):
            error, took = _call_within(30, lambda: store.usage("k"))
            assert isinstance(error, psycopg.errors.QueryCanceled), error
            assert "statement timeout" in str(error) and took < 10
        assert store.usage("k") == []


def _backend_pids(url: str) -> list[int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchall()
    return [pid for (pid,) in rows]


def test_postgres_call_to_a_stopped_server_is_cut_off_and_holds_up_no_other(
    postgres_server, monkeypatch
):
    """A stopped (or disk-stuck) server enforces no statement_timeout, and its kernel still
    acknowledges every TCP segment, so keepalives and tcp_user_timeout never fire either."""
    import psycopg

    import typegpt_gateway.keystore.postgres
    import typegpt_gateway.keystore.sql
    import typegpt_gateway.keystore.store

    monkeypatch.setattr(typegpt_gateway.keystore.postgres, "CALL_TIMEOUT", 3.0)
    monkeypatch.setattr(typegpt_gateway.keystore.sql, "LOCK_WAIT", 1.0)
    url = postgres_server.new_database()
    with contextlib.closing(PostgresKeyStore(url)) as store:
        (backend,) = _backend_pids(url)
        stuck: list[tuple[BaseException | None, float]] = []
        with _table_locked(url, "keys"):
            first = threading.Thread(
                target=lambda: stuck.append(_call_within(30, lambda: store.create("a"))),
                daemon=True,
            )
            first.start()
            _wait_for_lock_wait(url, backend)  # the call holds the store and waits on the server
            os.kill(backend, signal.SIGSTOP)
            try:
                # Another call fails after LOCK_WAIT instead of queueing behind the stuck one...
                error, took = _call_within(30, store.records)
                assert isinstance(error, typegpt_gateway.keystore.store.StoreBusyError), error
                assert took < 3.0
                # ...which is cut off after CALL_TIMEOUT, and the next call reconnects.
                first.join(30)
                assert stuck and isinstance(stuck[0][0], psycopg.OperationalError), stuck
                assert 2.5 < stuck[0][1] < 10
            finally:
                os.kill(backend, signal.SIGCONT)
        assert [record.name for record in store.records()] == []


def _wait_for_lock_wait(url: str, pid: int) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as admin:
        while time.monotonic() < deadline:
            (waiting,) = admin.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if waiting == "Lock":
                return
            time.sleep(0.05)
    raise AssertionError(f"backend {pid} never waited on a lock")


# --- KeyCache: the server's in-memory view of the store ------------------------------------


GARBAGE_CALLS = 10_000


def garbage(index: int) -> str:
    return f"Bearer sk-garbage-{index:06d}"


async def refused(keys: KeyCache, authorization: str) -> GatewayError:
    with pytest.raises(GatewayError) as excinfo:
        await keys.authenticate(authorization)
    return excinfo.value


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
def test_unknown_keys_cost_a_bounded_number_of_store_reads(tmp_path, concurrent):
    store = CountedReads(KeyStore(tmp_path / "keys.db"))
    try:
        keys = KeyCache(store, interval=60.0)  # type: ignore[arg-type]
        store.reads = 0

        async def flood() -> list[GatewayError]:
            if concurrent:
                calls = (refused(keys, garbage(index)) for index in range(GARBAGE_CALLS))
                return list(await asyncio.gather(*calls))
            return [await refused(keys, garbage(index)) for index in range(GARBAGE_CALLS)]

        started = time.monotonic()
        errors = asyncio.run(asyncio.wait_for(flood(), 120))
        elapsed = time.monotonic() - started
    finally:
        store.store.close()
    assert all(error.status == 403 for error in errors)
    # At most one check (a version read) per spacing, plus the one in flight at the end.
    assert store.reads <= 2 + elapsed / KeyCache.MISS_CHECK_SPACING, (store.reads, elapsed)


def test_a_key_created_elsewhere_is_accepted_on_its_first_use(store_factory):
    server, cli = store_factory(), store_factory()

    async def first_use() -> str:
        keys = KeyCache(server, interval=60.0)  # the refresher never runs here
        # A check of the store that ended a moment ago (the refresher's, say) changes nothing.
        await keys.refresh()
        _, key = cli.create("newcomer")
        record = await keys.authenticate(f"Bearer {key}")
        return record.name

    assert asyncio.run(asyncio.wait_for(first_use(), 30)) == "newcomer"


def test_during_a_flood_a_new_key_is_accepted_within_the_spacing(tmp_path):
    server, cli = KeyStore(tmp_path / "keys.db"), KeyStore(tmp_path / "keys.db")

    async def scenario() -> float:
        keys = KeyCache(server, interval=60.0)
        for index in range(100):
            await refused(keys, garbage(index))
        _, key = cli.create("newcomer")
        created = time.monotonic()
        # Unknown keys keep coming while the new key waits for the next check of the store.
        while True:
            await refused(keys, garbage(0))
            try:
                await keys.authenticate(f"Bearer {key}")
            except GatewayError:
                assert time.monotonic() - created < 5.0, "the new key was never accepted"
                await asyncio.sleep(0.01)
                continue
            return time.monotonic() - created

    try:
        waited = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        server.close()
        cli.close()
    assert waited < KeyCache.MISS_CHECK_SPACING + 1.0


def test_a_stopped_refresher_leaves_no_check_behind(tmp_path):
    """Shutdown cancels the refresher, then counts the tasks left over as leaks: a check
    still running in its worker thread must end with the refresher, not outlive it."""
    entered, release = threading.Event(), threading.Event()

    class HeldReads(CountedReads):
        held = False

        def data_version(self) -> int:
            if self.held:
                entered.set()
                release.wait(10)
            return super().data_version()

    store = HeldReads(KeyStore(tmp_path / "keys.db"))

    async def scenario() -> list[asyncio.Task]:
        async with asyncio.timeout(30):  # not wait_for: its task would count as left over
            keys = KeyCache(store, interval=0.0)  # type: ignore[arg-type]
            store.held = True
            refresher = asyncio.create_task(keys.run_refresher())
            assert await asyncio.to_thread(entered.wait, 10)
            refresher.cancel()
            release.set()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    try:
        assert asyncio.run(scenario()) == []
    finally:
        store.store.close()
