"""bench/capacity.py: its arithmetic on figures chosen by hand, and the README's capacity tables
are what it prints from the benchmark results kept in bench/results/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "capacity.py"

# Round numbers: the backend 0.8 ms of CPU a request (1.0 with every key limited in Redis),
# Envoy 0.2 ms; at a 50% target a worker carries 625 req/s (500 limited) and one Envoy thread
# 2,500, so a pod holds 4 workers.
RUN: dict[str, Any] = {
    "cpus": 2,
    "settings": {
        "GATEWAY_KEY_REFRESH_INTERVAL": 0.5,
        "GATEWAY_USAGE_FLUSH_INTERVAL": 2.0,
        "GATEWAY_SSE_KEEPALIVE_INTERVAL": 15.0,
    },
    "gateway": {
        "rps": 1500.0,
        "cpu_ms_per_request": 1.0,
        "envoy_cpu_ms_per_request": 0.2,
        "rss_mb": 150.0,
        "envoy_rss_mb": 70.0,
    },
    "many_keys": {"keys": 100_000},
    "ledger": {"batches": 26, "seconds": 102.8},
}
LIMITER: dict[str, Any] = {
    "redis_traffic": {
        "every_limit": {
            "commands_per_request": 22.0,
            "round_trips_per_request": 3.0,
            "redis_cpu_us_per_request": 50.0,
            "client_cpu_us_per_request": 200.0,
        },
        "unlimited": {"commands_per_request": 0, "round_trips_per_request": 0.0},
    }
}
OPEN_STREAMS = {"kb_per_stream": 110.0}


def capacity(tmp_path: Path, *args: str, streams: bool = True) -> str:
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    (tmp_path / "limiter.json").write_text(json.dumps(LIMITER))
    if streams:
        (tmp_path / "open_streams.json").write_text(json.dumps(OPEN_STREAMS))
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--run", str(tmp_path / "run.json"),
            "--limiter", str(tmp_path / "limiter.json"),
            "--open-streams", str(tmp_path / "open_streams.json"),
            "--target", "0.5",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def row(output: str, name: str) -> list[str]:
    """The cells after the first of the table row that starts with `name`."""
    for line in output.splitlines():
        if line.startswith(f"| {name}"):
            return [cell.strip() for cell in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row {name!r} in:\n{output}")


def test_per_core_figures_come_from_cpu_per_request(tmp_path: Path) -> None:
    output = capacity(tmp_path)
    assert row(output, "Requests/s per core, backend (Python) alone")[0] == "1,250"
    assert row(output, "Requests/s per core, Envoy alone")[0] == "5,000"
    assert row(output, "Requests/s per core, Envoy + backend")[0] == "1,000"
    assert row(output, "… with every key limited in Redis")[0] == "833"
    assert row(output, "Memory per backend worker")[0] == "80 MB"
    assert row(output, "Memory per open stream")[0] == "110 kB"


def test_pods_and_workers_scale_with_the_rate(tmp_path: Path) -> None:
    output = capacity(tmp_path)
    assert "4 backend workers per pod behind 1 Envoy thread" in output
    # Never below the Deployment's two pods.
    assert row(output, "Pods x workers, no key limited") == ["2 x 4", "4 x 4", "40 x 4"]
    # Limited keys cost the backend 0.2 ms more: 2,000 req/s a pod.
    assert row(output, "Pods x workers, every key limited") == ["2 x 4", "5 x 4", "50 x 4"]
    assert row(output, "CPU cores (requests), no key limited") == ["2.00", "20.0", "200"]


def test_workers_per_pod_can_be_chosen(tmp_path: Path) -> None:
    output = capacity(tmp_path, "--workers-per-pod", "1", "--min-pods", "1", "--rates", "500,10000")
    assert row(output, "Pods x workers, no key limited") == ["1 x 1", "16 x 1"]


def test_redis_and_postgresql_traffic_at_each_rate(tmp_path: Path) -> None:
    output = capacity(tmp_path)
    assert row(output, "Redis round trips/s") == ["3,000", "30,000", "300,000"]
    assert row(output, "Redis commands/s") == ["22,000", "220,000", "2,200,000"]
    # One transaction per process per flush: it follows the processes, not the requests.
    assert row(output, "PostgreSQL ledger transactions/s") == ["4.00", "10.0", "100"]
    # At most one row per request, and at most the active keys per pod and flush.
    assert row(output, "PostgreSQL ledger row upserts/s") == ["1,000", "2,500", "25,000"]
    assert row(output, "PostgreSQL key-version reads/s") == ["16.0", "40.0", "400"]


def test_the_first_saturation_point_and_its_change(tmp_path: Path) -> None:
    output = capacity(tmp_path)
    saturates = output[output.index("| saturates first") :].splitlines()[2:]
    names = [line.split("|")[1].strip() for line in saturates]
    assert names[0] == "One Redis, every key limited"
    # Its one thread at 50 µs a request: 20,000 req/s, below 100,000 / 3 round trips.
    assert row(output, "One Redis, every key limited")[0] == "20,000"
    assert "shard the limits by key across Redis instances" in saturates[0]
    assert {"PostgreSQL, ledger row upserts", "PostgreSQL, key refresh on changes"} <= set(names)
    rates = [float(line.split("|")[2].replace(",", "")) for line in saturates]
    assert rates == sorted(rates)


def test_without_an_open_streams_run_it_says_so(tmp_path: Path) -> None:
    output = capacity(tmp_path, streams=False)
    assert row(output, "Memory per open stream")[0] == "not measured"


def test_the_readme_shows_what_the_script_prints_from_the_kept_results() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=True
    )
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Capacity planning") :]
    assert result.stdout in section, (
        "README's Capacity planning tables differ from `python bench/capacity.py`: paste its "
        "output there"
    )
