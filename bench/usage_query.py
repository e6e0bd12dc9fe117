"""The admin API's usage queries on a ledger of a million rows: a throwaway SQLite file in a
temporary directory, and a throwaway PostgreSQL (started and stopped by this script, when
Debian's `postgresql` is installed).

    python bench/usage_query.py [--rows 1000000] [--runs 7] [--json PATH]

The ledger is filled as the gateway fills it, through the store's add_usage, a day at a time:
--rows rows over 365 UTC days, 8 models and as many keys as that takes (343 for a million),
every key using every model every day, with made-up counts and costs, and a key for each
name. PostgreSQL's table is then analyzed, as autovacuum would have done. Then each query the
admin API runs (the store's own calls: GetUsage's totals, and every key's use of its budget
period that ListKeys reads) is timed --runs times on the warm database, and the median and the
slowest run are printed in milliseconds, with the index the database's planner chose for it
(SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN).

`--json PATH` also writes those figures to a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from typegpt_gateway.keystore.sql import SqlStore, key_activity_query, usage_totals_query
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.keystore.store import UsageGroup, UsageRow

DAYS = 365
MODELS = ("gpt-5", "gpt-5-mini", "gpt-4.1", "gpt-4o", "gpt-4o-mini", "o3", "o4-mini", "o1")
LAST_DAY = dt.date(2026, 12, 31)
FIRST_DAY = LAST_DAY - dt.timedelta(days=DAYS - 1)
LOOKBACK = LAST_DAY - dt.timedelta(days=89)  # the console's longest view: 90 days


ACTIVITY = "every key's use (ListKeys)"
PERIOD_STARTS = {"day": LAST_DAY, "month": LAST_DAY.replace(day=1)}


def _key(index: int) -> str:
    return f"key-{index:04d}"


# name → (group_by, since, until, key): what the admin API asks the store for.
QUERIES: dict[str, tuple[tuple[UsageGroup, ...], dt.date | None, dt.date | None, str | None]] = {
    "day, 90 days": (("day",), LOOKBACK, None, None),
    "day+model, 90 days": (("day", "model"), LOOKBACK, None, None),
    "key, 90 days": (("key",), LOOKBACK, None, None),
    "one key day+model, 90 days": (("day", "model"), LOOKBACK, None, _key(0)),
    "day, 365 days": (("day",), None, None, None),
}


def _ledger(rows: int) -> Iterator[list[tuple[str, UsageRow]]]:
    """The rows a day at a time, every key using every model each day, until `rows`."""
    keys = -(-rows // (DAYS * len(MODELS)))
    left = rows
    for offset in range(DAYS):
        day = FIRST_DAY + dt.timedelta(days=offset)
        batch = []
        for index in range(keys):
            for number, model in enumerate(MODELS):
                if left == 0:
                    break
                left -= 1
                seed = offset * 7919 + index * 104729 + number * 31
                requests = 1 + seed % 50
                prompt, completion = requests * (200 + seed % 900), requests * (50 + seed % 400)
                row = UsageRow(
                    day, model, requests, prompt, completion, seed % 3, (prompt + completion) * 3
                )
                batch.append((_key(index), row))
        if batch:
            yield batch


def _fill(store: SqlStore, rows: int) -> float:
    """The ledger, and a key for each of its names (ListKeys reads their use)."""
    started = time.monotonic()
    names: set[str] = set()
    for batch in _ledger(rows):
        store.add_usage(batch)
        names.update(name for name, _ in batch)
    for name in sorted(names):
        store.create(name)
    return time.monotonic() - started


def _timed(call: Callable[[], object], runs: int) -> dict[str, Any]:
    call()  # warm: the first run reads the pages in
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return {
        "median_ms": round(statistics.median(took) * 1000, 1),
        "max_ms": round(max(took) * 1000, 1),
    }


def _sqlite_plan(path: Path, sql: str, params: list[str]) -> str:
    with sqlite3.connect(path) as db:
        steps = db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return "; ".join(step[-1] for step in steps)


def _postgres_analyze(url: str) -> None:
    """What autovacuum does to a ledger this size soon after it grew: the planner's figures
    for it. (SQLite gathers none unless told to, and the gateway does not.)"""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE usage")


def _postgres_plan(url: str, sql: str, params: list[str]) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        lines = conn.execute(f"EXPLAIN {sql.replace('?', '%s')}", params).fetchall()
    wanted = ("Scan", "Index", "Aggregate", "Sort")
    return "; ".join(
        line[0].strip().lstrip("-> ").split("  (")[0]
        for line in lines
        if any(word in line[0] for word in wanted)
    )


def _bench(
    name: str,
    store: SqlStore,
    rows: int,
    runs: int,
    plan: Callable[[str, list[str]], str],
    analyze: Callable[[], None] | None = None,
) -> dict[str, Any]:
    print(f"{name}: filling a ledger of {rows:,} rows…", flush=True)
    filled = _fill(store, rows)
    print(f"{name}: filled in {filled:.0f} s", flush=True)
    results: dict[str, Any] = {"rows": rows, "fill_s": round(filled, 1), "queries": {}}
    if analyze is not None:
        analyze()
    for label, (group_by, since, until, key) in QUERIES.items():
        query = functools.partial(store.usage_totals, group_by, since, until, key)
        figures = _timed(query, runs)
        figures["groups"] = len(query())
        figures["plan"] = plan(*usage_totals_query(group_by, since, until, key))
        results["queries"][label] = figures
        _print(name, label, figures)
    # ListKeys: every key's use of its budget period and last day, in one query.
    activity = functools.partial(store.key_activity, PERIOD_STARTS)
    figures = _timed(activity, runs)
    figures["groups"] = len(activity())
    figures["plan"] = plan(*key_activity_query(PERIOD_STARTS, None))
    results["queries"][ACTIVITY] = figures
    _print(name, ACTIVITY, figures)
    return results


def _print(name: str, label: str, figures: dict[str, Any]) -> None:
    print(
        f"{name:10} {label:28} median {figures['median_ms']:7.1f} ms  "
        f"max {figures['max_ms']:7.1f} ms  {figures['groups']:5} groups  "
        f"{figures.get('plan', '')}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    rows, runs = max(args.rows, 1), max(args.runs, 1)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="typegpt-usage-bench-") as workdir:
        path = Path(workdir) / "keys.db"
        store = KeyStore(path)
        try:
            results["sqlite"] = _bench(
                "sqlite", store, rows, runs, lambda sql, params: _sqlite_plan(path, sql, params)
            )
        finally:
            store.close()
    from servers import PostgresServer, _postgres_bin

    if _postgres_bin() is None:
        print("postgresql skipped: PostgreSQL is not installed (apt-get install postgresql)")
    else:
        from typegpt_gateway.keystore.postgres import PostgresKeyStore

        server = PostgresServer().start()
        try:
            url = server.new_database()
            pg_store = PostgresKeyStore(url)
            try:
                results["postgresql"] = _bench(
                    "postgresql",
                    pg_store,
                    rows,
                    runs,
                    lambda sql, params: _postgres_plan(url, sql, params),
                    lambda: _postgres_analyze(url),
                )
            finally:
                pg_store.close()
        finally:
            server.cleanup()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
