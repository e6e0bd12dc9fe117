"""Capacity on paper: what 1k, 10k and 100k requests/s need, from the benchmarks' own figures.

Reads the JSON that `bench/run.py --json`, `bench/limiter.py --json` and (if present)
`bench/open_streams.py --json` wrote, and prints markdown: what one request costs, what each
rate needs (cores, backend workers, pods, memory, Redis and PostgreSQL traffic), and which
shared part saturates first beyond that, with the change it would need. The figures it does not
measure (what one Redis or PostgreSQL can take) are stated assumptions, printed with it.

    python bench/capacity.py [--run bench/results/run.json] [--limiter bench/results/limiter.json]
        [--open-streams bench/results/open_streams.json] [--target 0.6] [--workers-per-pod N]
        [--envoy-concurrency 1] [--min-pods 2] [--rates 1000,10000,100000]
        [--active-keys 1000] [--key-changes-per-minute 1]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# Assumptions, not measured here.
# Redis's own benchmark page (https://redis.io/topics/benchmarks, source
# redis/redis-doc topics/benchmarks.md): one instance without pipelining serves about
# 100,000-140,000 simple commands a second (Xeon E5520: SET 122,556/s, GET 123,601/s; a
# Xeon L5420: 93,700-111,700/s), less on small VMs (Linode 2048: about 35,000/s).
REDIS_ROUND_TRIPS_PER_S = 100_000
# One PostgreSQL on SSD storage: each durable commit waits for a WAL flush, which concurrent
# commits share (group commit); 1,000 commits/s and 10,000 small row upserts/s on one hot
# table are deliberately modest planning figures, to be replaced by a pgbench of your server.
PG_COMMITS_PER_S = 1_000
PG_ROW_UPSERTS_PER_S = 10_000
# Rows the key refresh may read a second (every key, on every change), also an assumption.
PG_ROWS_READ_PER_S = 1_000_000
PG_SIMPLE_READS_PER_S = 10_000


@dataclass(frozen=True)
class Costs:
    """Per request, from the benchmarks."""

    python_ms: float  # the backend's CPU (ms) per request, keys without limits
    envoy_ms: float
    limiter_ms: float  # extra backend CPU (ms) when every key is limited in Redis
    redis_round_trips: float  # per request, every key limited
    redis_commands: float
    redis_cpu_us: float
    python_rss_mb: float  # one backend process under load
    envoy_rss_mb: float
    stream_kb: float | None  # one open stream, Envoy and Python together
    flush_interval: float
    refresh_interval: float
    store_keys: int
    ledger_batches: int  # written during the run, one transaction each
    ledger_seconds: float  # from the first batch to the last
    measured_on: str

    @classmethod
    def load(
        cls, run: dict[str, Any], limiter: dict[str, Any], streams: dict[str, Any] | None
    ) -> Costs:
        gateway = run["gateway"]
        limited = limiter["redis_traffic"]["every_limit"]
        return cls(
            python_ms=gateway["cpu_ms_per_request"] - gateway["envoy_cpu_ms_per_request"],
            envoy_ms=gateway["envoy_cpu_ms_per_request"],
            limiter_ms=limited["client_cpu_us_per_request"] / 1000,
            redis_round_trips=limited["round_trips_per_request"],
            redis_commands=limited["commands_per_request"],
            redis_cpu_us=limited["redis_cpu_us_per_request"],
            python_rss_mb=gateway["rss_mb"] - gateway["envoy_rss_mb"],
            envoy_rss_mb=gateway["envoy_rss_mb"],
            stream_kb=streams["kb_per_stream"] if streams else None,
            flush_interval=run["settings"]["GATEWAY_USAGE_FLUSH_INTERVAL"],
            refresh_interval=run["settings"]["GATEWAY_KEY_REFRESH_INTERVAL"],
            store_keys=run["many_keys"]["keys"],
            ledger_batches=run["ledger"]["batches"],
            ledger_seconds=run["ledger"]["seconds"],
            measured_on=f"{run['cpus']} cores",
        )


@dataclass(frozen=True)
class Options:
    target: float  # the CPU share a core or a worker is planned to run at
    workers_per_pod: int | None  # None: as many as one Envoy thread keeps up with
    envoy_concurrency: int
    min_pods: int  # the deployment's floor, for availability
    active_keys: int  # distinct (key, model) pairs the fleet serves per flush interval
    key_changes_per_minute: float


@dataclass(frozen=True)
class Shape:
    """The fleet for one rate."""

    rate: float
    limited: bool
    worker_rps: float  # what one backend process carries at the target
    workers_per_pod: int
    pod_rps: float
    pods: int
    cores: float

    @property
    def workers(self) -> int:
        return self.pods * self.workers_per_pod


def worker_rps(costs: Costs, options: Options, *, limited: bool) -> float:
    """One backend process is one core at most (Python's one thread of bytecode)."""
    python_ms = costs.python_ms + (costs.limiter_ms if limited else 0.0)
    return options.target * 1000 / python_ms


def envoy_rps(costs: Costs, options: Options) -> float:
    return options.target * options.envoy_concurrency * 1000 / costs.envoy_ms


def default_workers_per_pod(costs: Costs, options: Options) -> int:
    """As many workers as the pod's Envoy threads keep up with."""
    return max(1, math.floor(options.envoy_concurrency * costs.python_ms / costs.envoy_ms))


def shape(rate: float, costs: Costs, options: Options, *, limited: bool) -> Shape:
    per_worker = worker_rps(costs, options, limited=limited)
    per_pod_workers = options.workers_per_pod or default_workers_per_pod(costs, options)
    pod_rps = min(per_pod_workers * per_worker, envoy_rps(costs, options))
    python_ms = costs.python_ms + (costs.limiter_ms if limited else 0.0)
    cores = rate * (python_ms + costs.envoy_ms) / 1000 / options.target
    pods = max(options.min_pods, math.ceil(rate / pod_rps))
    return Shape(rate, limited, per_worker, per_pod_workers, pod_rps, pods, cores)


def ledger_rows_per_request(pod_rps: float, costs: Costs, options: Options) -> float:
    """Each process writes, per flush, one row per distinct (key, model, day) it served: never
    more rows than requests. Every pod sees every key, and its workers split them (a key is
    pinned to one worker of a pod), so a pod writes at most `active_keys` rows per flush."""
    return min(1.0, options.active_keys / (pod_rps * costs.flush_interval))


def ledger_rows_per_s(fleet: Shape, costs: Costs, options: Options) -> float:
    return min(fleet.rate, fleet.pods * options.active_keys / costs.flush_interval)


def _n(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def per_request(costs: Costs) -> list[str]:
    python_core = 1000 / costs.python_ms
    envoy_core = 1000 / costs.envoy_ms
    both = 1000 / (costs.python_ms + costs.envoy_ms)
    limited_core = 1000 / (costs.python_ms + costs.limiter_ms + costs.envoy_ms)
    stream = "not measured" if costs.stream_kb is None else f"{costs.stream_kb:,.0f} kB"
    rows = [
        ["Requests/s per core, backend (Python) alone", _n(python_core), "run.py"],
        ["Requests/s per core, Envoy alone", _n(envoy_core), "run.py"],
        ["Requests/s per core, Envoy + backend", _n(both), "run.py"],
        ["… with every key limited in Redis", _n(limited_core), "run.py + limiter.py"],
        [
            "Redis round trips per request: limited key / unlimited key",
            f"{_n(costs.redis_round_trips)} / 0",
            "limiter.py",
        ],
        [
            "Redis commands per request (script's own counted): limited / unlimited",
            f"{_n(costs.redis_commands)} / 0",
            "limiter.py, INFO commandstats",
        ],
        ["Redis CPU per limited request", f"{costs.redis_cpu_us:,.0f} µs", "limiter.py"],
        ["Memory per backend worker (RSS)", f"{costs.python_rss_mb:,.0f} MB", "run.py"],
        ["Memory of a pod's Envoy (RSS)", f"{costs.envoy_rss_mb:,.0f} MB", "run.py"],
        ["Memory per open stream (Envoy + backend)", stream, "open_streams.py"],
        [
            "Ledger: PostgreSQL transactions per process",
            f"at most 1 per {costs.flush_interval:g} s (none while idle)",
            f"GATEWAY_USAGE_FLUSH_INTERVAL; run.py: {costs.ledger_batches} batches in "
            f"{costs.ledger_seconds:g} s",
        ],
        [
            "Key cache: version reads per process",
            f"1 per {costs.refresh_interval:g} s",
            "GATEWAY_KEY_REFRESH_INTERVAL",
        ],
    ]
    return _table(["per request or process", "measured", "from"], rows)


def at_rates(rates: list[float], costs: Costs, options: Options) -> list[str]:
    free = [shape(rate, costs, options, limited=False) for rate in rates]
    limited = [shape(rate, costs, options, limited=True) for rate in rates]

    def row(name: str, cells: list[str]) -> list[str]:
        return [name, *cells]

    def memory_gb(fleet: Shape) -> str:
        return _n((fleet.workers * costs.python_rss_mb + fleet.pods * costs.envoy_rss_mb) / 1000)

    rows = [
        row("CPU cores (requests), no key limited", [_n(f.cores) for f in free]),
        row("CPU cores (requests), every key limited", [_n(f.cores) for f in limited]),
        row(
            "Pods x workers, no key limited",
            [f"{f.pods:,} x {f.workers_per_pod}" for f in free],
        ),
        row(
            "Pods x workers, every key limited",
            [f"{f.pods:,} x {f.workers_per_pod}" for f in limited],
        ),
        row("Memory (GB), no open streams", [memory_gb(f) for f in free]),
        row(
            "Redis round trips/s (every key limited; 0 unlimited)",
            [_n(rate * costs.redis_round_trips) for rate in rates],
        ),
        row(
            "Redis commands/s (every key limited)",
            [_n(rate * costs.redis_commands) for rate in rates],
        ),
        row(
            "Redis CPU (cores of its one thread)",
            [_n(rate * costs.redis_cpu_us / 1e6) for rate in rates],
        ),
        row(
            "PostgreSQL ledger transactions/s",
            [_n(f.workers / costs.flush_interval) for f in limited],
        ),
        row(
            f"PostgreSQL ledger row upserts/s ({options.active_keys:,} keys active)",
            [_n(ledger_rows_per_s(f, costs, options)) for f in limited],
        ),
        row(
            "PostgreSQL key-version reads/s",
            [_n(f.workers / costs.refresh_interval) for f in limited],
        ),
        row(
            f"Key rows read per key change ({costs.store_keys:,} keys)",
            [_n(f.workers * costs.store_keys) for f in limited],
        ),
    ]
    return _table(["at", *(f"{rate:,.0f} req/s" for rate in rates)], rows)


@dataclass(frozen=True)
class Ceiling:
    what: str
    rate: float  # requests/s at which it saturates
    basis: str
    change: str


def ceilings(costs: Costs, options: Options) -> list[Ceiling]:
    """The request rates at which each shared part saturates, lowest first."""
    per_worker = worker_rps(costs, options, limited=True)
    pod_rps = shape(0.0, costs, options, limited=True).pod_rps
    redis_by_trips = REDIS_ROUND_TRIPS_PER_S / costs.redis_round_trips
    redis_by_cpu = 1e6 / costs.redis_cpu_us
    rows_per_request = ledger_rows_per_request(pod_rps, costs, options)
    changes_per_s = options.key_changes_per_minute / 60
    found = [
        Ceiling(
            "One Redis, every key limited",
            min(redis_by_trips, redis_by_cpu),
            f"{costs.redis_round_trips:g} round trips/request against "
            f"{REDIS_ROUND_TRIPS_PER_S:,}/s (Redis's benchmark page): {_n(redis_by_trips)}; "
            f"its one thread at {costs.redis_cpu_us:,.0f} µs/request: {_n(redis_by_cpu)}",
            "shard the limits by key across Redis instances (every key's state already lives "
            "in one hash slot: Redis Cluster, `GATEWAY_REDIS_CLUSTER`), or keep per-key state "
            "in the worker its key is pinned to and use Redis only across pods",
        ),
        Ceiling(
            "PostgreSQL, ledger row upserts",
            PG_ROW_UPSERTS_PER_S / rows_per_request,
            f"{rows_per_request:.2f} rows/request ({options.active_keys:,} keys active, every "
            f"pod writing each) against an assumed {PG_ROW_UPSERTS_PER_S:,} upserts/s",
            "a longer `GATEWAY_USAGE_FLUSH_INTERVAL` (fewer, fuller rows), a ledger table "
            "partitioned by day, or ledger writes through a queue to a separate database",
        ),
        Ceiling(
            "PostgreSQL, key refresh on changes",
            PG_ROWS_READ_PER_S / (costs.store_keys * changes_per_s) * per_worker
            if changes_per_s > 0
            else math.inf,
            f"every process reads all {costs.store_keys:,} keys on each change "
            f"({options.key_changes_per_minute:g}/min) against an assumed "
            f"{PG_ROWS_READ_PER_S:,} rows read/s",
            "refresh by difference (keys changed since the version the process holds) or push "
            "changes (LISTEN/NOTIFY) instead of reloading every key",
        ),
        Ceiling(
            "PostgreSQL, ledger transactions",
            PG_COMMITS_PER_S * costs.flush_interval * per_worker,
            f"one per process every {costs.flush_interval:g} s against an assumed "
            f"{PG_COMMITS_PER_S:,} commits/s",
            "one writer per pod (or a longer flush interval)",
        ),
        Ceiling(
            "PostgreSQL, key-version reads",
            PG_SIMPLE_READS_PER_S * costs.refresh_interval * per_worker,
            f"one per process every {costs.refresh_interval:g} s against an assumed "
            f"{PG_SIMPLE_READS_PER_S:,} simple reads/s",
            "one refresher per pod sharing its keys with the pod's workers",
        ),
    ]
    return sorted(found, key=lambda ceiling: ceiling.rate)


def report(
    run: dict[str, Any],
    limiter: dict[str, Any],
    streams: dict[str, Any] | None,
    options: Options,
    rates: list[float],
) -> str:
    costs = Costs.load(run, limiter, streams)
    per_pod = options.workers_per_pod or default_workers_per_pod(costs, options)
    lines = [
        f"Measured on {costs.measured_on}; planned at {options.target:.0%} CPU; "
        f"{per_pod} backend workers per pod behind {options.envoy_concurrency} Envoy "
        f"thread{'s' if options.envoy_concurrency > 1 else ''} "
        f"(a worker carries {_n(worker_rps(costs, options, limited=False))} req/s, "
        f"{_n(worker_rps(costs, options, limited=True))} with every key limited in Redis; "
        f"one Envoy thread {_n(envoy_rps(costs, options))}).",
        "",
        *per_request(costs),
        "",
        *at_rates(rates, costs, options),
        "",
        *_table(
            ["saturates first", "at about (req/s)", "because", "the change it would need"],
            [
                [c.what, _n(c.rate) if math.isfinite(c.rate) else "never", c.basis, c.change]
                for c in ceilings(costs, options)
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RESULTS / "run.json")
    parser.add_argument("--limiter", type=Path, default=RESULTS / "limiter.json")
    parser.add_argument("--open-streams", type=Path, default=RESULTS / "open_streams.json")
    parser.add_argument("--target", type=float, default=0.6, help="planned CPU share")
    parser.add_argument("--workers-per-pod", type=int, help="default: what one Envoy keeps up with")
    parser.add_argument("--envoy-concurrency", type=int, default=1)
    parser.add_argument("--min-pods", type=int, default=2, help="the Deployment's minimum")
    parser.add_argument("--rates", default="1000,10000,100000", help="requests/s, comma-separated")
    parser.add_argument("--active-keys", type=int, default=1000)
    parser.add_argument("--key-changes-per-minute", type=float, default=1.0)
    args = parser.parse_args()
    if not 0 < args.target <= 1:
        parser.error("--target is a share of a core, above 0 and at most 1")
    streams = _read(args.open_streams) if args.open_streams.exists() else None
    options = Options(
        target=args.target,
        workers_per_pod=args.workers_per_pod,
        envoy_concurrency=args.envoy_concurrency,
        min_pods=args.min_pods,
        active_keys=args.active_keys,
        key_changes_per_minute=args.key_changes_per_minute,
    )
    rates = [float(rate) for rate in args.rates.split(",")]
    print(report(_read(args.run), _read(args.limiter), streams, options, rates), end="")


if __name__ == "__main__":
    main()
