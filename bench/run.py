"""Benchmark: the gateway against direct calls to the same upstream, in one run.

Starts nginx (canned chat completion, and a canned 20-chunk SSE stream), three gateways (JSON
upstream, SSE upstream, and one whose store holds --keys keys), the architecture's floor
(floor_backend.py behind the same Envoy config), and drives bounded loads on 127.0.0.1 with
wrk and a small asyncio streaming client. Prints a table: requests/s, p50/p99, added latency
vs direct, CPU ms per request of all gateway processes (from /proc), their RSS, the cost of a
large prompt and of many keys, and streaming time-to-first-byte overhead. The gateways run
with the default settings.

    python bench/run.py [--duration 12] [--streams 16] [--stream-rounds 30] [--keys 100000]
        [--json PATH]

`--json PATH` also writes the figures (and the batches the usage ledger wrote) to a file, for
bench/capacity.py.

Needs nginx and wrk (Debian packages `nginx-light` or `nginx`, and `wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gateway_process import Gateway, free_port  # noqa: E402
from paced_upstream import chunk_event  # noqa: E402

from typegpt_gateway.keystore.sqlite import KeyStore  # noqa: E402
from typegpt_gateway.process import envoy, envoy_config  # noqa: E402
from typegpt_gateway.settings import Settings  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello, how are you?"}]}
LARGE_PROMPT_BYTES = 64 * 1024
# The floor checks no key, but Envoy refuses a request without a well-formed one on its
# headers, as it does for the gateway: every load carries one.
FLOOR_KEY = "sk-the-floor-checks-no-key"
# Each wrk load runs in this many interleaved rounds of duration / ROUNDS seconds.
ROUNDS = 3
# The test harness speeds these up; a benchmark runs what users run.
DEFAULTS = {
    f"GATEWAY_{name.upper()}": str(Settings.model_fields[name].default)
    for name in ("key_refresh_interval", "usage_flush_interval", "sse_keepalive_interval")
}
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}
STREAM_CHUNKS = 20


def nginx_config(workdir: Path, json_port: int, sse_port: int) -> str:
    workdir.chmod(0o755)  # nginx workers drop to an unprivileged user and must read these
    (workdir / "completion.json").write_text(json.dumps(COMPLETION))
    (workdir / "stream.sse").write_text(
        "".join(f"data: {chunk_event(i)}\n\n" for i in range(STREAM_CHUNKS)) + "data: [DONE]\n\n"
    )
    # Static files answer GET only; `error_page 405 =200` serves them to POST as well.
    return f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_buffer_size 1m;
    client_body_temp_path {workdir}/body;
    server {{
        listen 127.0.0.1:{json_port} backlog=4096;
        root {workdir};
        location / {{
            default_type application/json;
            try_files /completion.json =404;
            error_page 405 =200 $uri;
        }}
    }}
    server {{
        listen 127.0.0.1:{sse_port} backlog=4096;
        root {workdir};
        location / {{
            default_type text/event-stream;
            try_files /stream.sse =404;
            error_page 405 =200 $uri;
        }}
    }}
}}
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, script: Path, connections: int, seconds: int, key: str | None) -> Load:
    env = {**os.environ, "BENCH_KEY": key or ""}
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=seconds + 30,
    )
    out = result.stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}:\n{out}")
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    )


def wrk_script(path: Path, request: dict[str, object]) -> Path:
    """BENCH_KEY is one key, or several separated by commas, taken in turn request by request
    (so that Envoy's hash on the key spreads the load over the workers)."""
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(request)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "local keys = {}\n"
        'for key in string.gmatch(os.getenv("BENCH_KEY") or "", "[^,]+") do\n'
        "  keys[#keys + 1] = key\n"
        "end\n"
        "local turn = 0\n"
        'if #keys == 1 then wrk.headers["Authorization"] = "Bearer " .. keys[1] end\n'
        "if #keys > 1 then\n"
        "  request = function()\n"
        "    turn = turn % #keys + 1\n"
        '    wrk.headers["Authorization"] = "Bearer " .. keys[turn]\n'
        "    return wrk.format()\n"
        "  end\n"
        "end\n"
    )
    return path


def fill_store(db: Path, count: int) -> None:
    """`count` keys in the store at `db`, before its gateway starts."""
    store = KeyStore(db)
    try:
        for index in range(count):
            store.create(f"filler-{index}")
    finally:
        store.close()


class Floor:
    """floor_backend.py behind an Envoy with the gateway's own config."""

    def __init__(self, workdir: Path, upstream: str) -> None:
        self.http_port, grpc_port = free_port(), free_port()
        settings = Settings(host="127.0.0.1", http_port=self.http_port)
        config = workdir / "envoy.yaml"
        config.write_text(envoy_config.render_config(settings, grpc_port=grpc_port))
        self.backend = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "floor_backend.py"),
                "--grpc-port",
                str(grpc_port),
                "--upstream",
                upstream,
            ]
        )
        self.envoy = subprocess.Popen(
            envoy.command(settings, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{self.http_port}/v1/chat/completions"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the floor backend did not answer within 30 s")

    def _answers(self) -> bool:
        try:
            headers = {"authorization": f"Bearer {FLOOR_KEY}"}
            return httpx.post(self.url, json=REQUEST, headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pids(self) -> list[int]:
        return [self.backend.pid, self.envoy.pid]

    def stop(self) -> None:
        for process in (self.envoy, self.backend):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def process_tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            children = (task / "children").read_text().split()
            pending.extend(int(child) for child in children)
    return pids


def is_envoy(pid: int) -> bool:
    return Path(f"/proc/{pid}/comm").read_text().strip() == "envoy"


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICKS


def rss_mb(pids: list[int]) -> float:
    pages = sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in pids)
    return pages * PAGE / 1e6


async def _one_stream(host: str, port: int, path: str, body: bytes, key: str | None) -> float:
    """Seconds to the first `data:` byte of one streamed request (a fresh connection)."""
    reader, writer = await asyncio.open_connection(host, port)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    started = time.perf_counter()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    buffer = b""
    first = None
    while chunk := await reader.read(65536):
        buffer += chunk
        if first is None and b"data: " in buffer:
            first = time.perf_counter() - started
    writer.close()
    if first is None or b"data: [DONE]" not in buffer:
        raise RuntimeError(f"stream from :{port} did not complete: {buffer[:300]!r}")
    return first


async def streams(
    port: int, path: str, key: str | None, concurrent: int, rounds: int
) -> list[float]:
    body = json.dumps({**REQUEST, "stream": True}).encode()
    ttfbs: list[float] = []
    for _ in range(rounds):
        ttfbs += await asyncio.gather(
            *(_one_stream("127.0.0.1", port, path, body, key) for _ in range(concurrent))
        )
    return ttfbs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=int, default=12, help="seconds per load (in interleaved rounds)"
    )
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams")
    parser.add_argument("--stream-rounds", type=int, default=30, help="rounds of streams")
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the many-keys store")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--no-workers",
        dest="workers",
        action="store_false",
        help="skip the comparison of --workers 1 and --workers 2",
    )
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} not found: apt-get install nginx-light wrk")

    with tempfile.TemporaryDirectory(prefix="typegpt-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "body").mkdir()
        json_port, sse_port = free_port(), free_port()
        (workdir / "nginx.conf").write_text(nginx_config(workdir, json_port, sse_port))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = subprocess.Popen([nginx_bin, "-c", str(workdir / "nginx.conf"), "-p", tmp])
        time.sleep(0.5)
        json_upstream = f"http://127.0.0.1:{json_port}/v1"
        many = Gateway(workdir / "gw-many", json_upstream, extra_env=DEFAULTS)
        many.workdir.mkdir(parents=True)
        fill_store(many.db, args.keys)
        gateways = [
            Gateway(workdir / "gw-json", json_upstream, extra_env=DEFAULTS).start(),
            Gateway(
                workdir / "gw-sse", f"http://127.0.0.1:{sse_port}/v1", extra_env=DEFAULTS
            ).start(),
            many.start(),
        ]
        (workdir / "floor").mkdir()
        floor = Floor(workdir / "floor", json_upstream)
        try:
            try:
                rows, figures = run_loads(args, workdir, json_port, sse_port, *gateways, floor)
            finally:
                floor.stop()
                for gateway in gateways:
                    gateway.stop()
            if args.workers:
                worker_rows, worker_figures = compare_workers(args, workdir, json_upstream)
                rows += worker_rows
                figures["workers"] = worker_figures
        finally:
            nginx.terminate()
            nginx.wait()
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


@dataclass
class Measured:
    load: Load
    cpu_ms: float
    envoy_cpu_ms: float
    rss_mb: float
    envoy_rss_mb: float = 0.0


def measured_load(
    url: str, script: Path, key: str | None, pids: list[int], seconds: int, connections: int = 16
) -> Measured:
    """A load, with the CPU per request and the RSS of `pids` under it."""
    envoys = [pid for pid in pids if is_envoy(pid)]
    cpu_before, envoy_before = cpu_seconds(pids), cpu_seconds(envoys)
    load = wrk(url, script, connections, seconds, key)
    rss, envoy_rss = rss_mb(pids), rss_mb(envoys)
    return Measured(
        load,
        (cpu_seconds(pids) - cpu_before) * 1000 / load.requests,
        (cpu_seconds(envoys) - envoy_before) * 1000 / load.requests,
        rss,
        envoy_rss,
    )


def median_of(loads: list[Load]) -> Load:
    return Load(
        statistics.median(load.rps for load in loads),
        statistics.median(load.p50_ms for load in loads),
        statistics.median(load.p99_ms for load in loads),
        sum(load.requests for load in loads),
    )


def median_measured(rounds: list[Measured]) -> Measured:
    return Measured(
        median_of([measured.load for measured in rounds]),
        statistics.median(measured.cpu_ms for measured in rounds),
        statistics.median(measured.envoy_cpu_ms for measured in rounds),
        max(measured.rss_mb for measured in rounds),
        max(measured.envoy_rss_mb for measured in rounds),
    )


def run_loads(
    args: argparse.Namespace,
    workdir: Path,
    json_port: int,
    sse_port: int,
    gw_json: Gateway,
    gw_sse: Gateway,
    gw_many: Gateway,
    floor: Floor,
) -> tuple[list[tuple[str, str, str]], dict[str, object]]:
    script = wrk_script(workdir / "post.lua", REQUEST)
    large = {**REQUEST, "messages": [{"role": "user", "content": "x" * LARGE_PROMPT_BYTES}]}
    large_script = wrk_script(workdir / "large.lua", large)
    # Loaded by the running gateways before the first request: a refused one fails the run.
    key = gw_json.wait_for_key(gw_json.create_key("bench"))
    sse_key = gw_sse.wait_for_key(gw_sse.create_key("bench"))
    many_key = gw_many.wait_for_key(gw_many.create_key("bench"), timeout=30)
    direct = f"http://127.0.0.1:{json_port}/v1/chat/completions"
    via = f"{gw_json.url}/v1/chat/completions"
    via_many = f"{gw_many.url}/v1/chat/completions"
    # Warm-up: pools, caches, lazy imports.
    for url, warm_key in ((via, key), (via_many, many_key), (floor.url, FLOOR_KEY)):
        wrk(url, script, 16, 2, warm_key)
    pids = process_tree(gw_json.process.pid)  # type: ignore[union-attr]

    many_pids = process_tree(gw_many.process.pid)  # type: ignore[union-attr]
    # Interleaved rounds in a rotating order, medians kept: a noisy neighbour or the load
    # before slows every target alike.
    seconds = max(1, args.duration // ROUNDS)
    loads: dict[str, Callable[[], Measured]] = {
        "direct": lambda: measured_load(direct, script, None, [], seconds),
        "gateway": lambda: measured_load(via, script, key, pids, seconds),
        "floor": lambda: measured_load(floor.url, script, FLOOR_KEY, floor.pids, seconds),
        "keys": lambda: measured_load(via_many, script, many_key, many_pids, seconds),
        "direct1": lambda: measured_load(direct, script, None, [], seconds, 1),
        "gateway1": lambda: measured_load(via, script, key, pids, seconds, 1),
        "floor1": lambda: measured_load(floor.url, script, FLOOR_KEY, floor.pids, seconds, 1),
    }
    rounds: dict[str, list[Measured]] = {name: [] for name in loads}
    names = list(loads)
    for turn in range(ROUNDS):
        for name in names[turn:] + names[:turn]:
            rounds[name].append(loads[name]())
    medians = {name: median_measured(measured) for name, measured in rounds.items()}
    direct16, gateway, base, with_keys = (
        medians[n] for n in ("direct", "gateway", "floor", "keys")
    )
    direct1, via1, floor1 = (medians[n].load for n in ("direct1", "gateway1", "floor1"))
    # Last: large bodies leave the gateway's heap larger, which would count in its RSS above.
    prompt = median_measured(
        [measured_load(via, large_script, key, pids, seconds) for _ in range(ROUNDS)]
    )

    path = "/v1/chat/completions"
    asyncio.run(streams(gw_sse.http_port, path, sse_key, args.streams, 2))
    sse_pids = process_tree(gw_sse.process.pid)  # type: ignore[union-attr]
    # Direct and gateway rounds alternate, as above; CPU is counted over the gateway's only.
    direct_ttfb: list[float] = []
    via_ttfb: list[float] = []
    stream_cpu = 0.0
    for _ in range(args.stream_rounds):
        direct_ttfb += asyncio.run(streams(sse_port, path, None, args.streams, 1))
        cpu_before = cpu_seconds(sse_pids)
        via_ttfb += asyncio.run(streams(gw_sse.http_port, path, sse_key, args.streams, 1))
        stream_cpu += cpu_seconds(sse_pids) - cpu_before
    stream_cpu_ms = stream_cpu * 1000 / len(via_ttfb)
    ttfb_added = (statistics.median(via_ttfb) - statistics.median(direct_ttfb)) * 1000
    figures = collect_figures(args, medians, prompt, ttfb_added, stream_cpu_ms, gw_json.db)

    return [
        (
            "Non-stream, 16 connections: requests/s",
            f"{gateway.load.rps:,.0f}",
            f"direct {direct16.load.rps:,.0f}; floor {base.load.rps:,.0f}; target ≥ 2,200",
        ),
        (
            "Non-stream, 16 connections: p50 / p99 ms",
            f"{gateway.load.p50_ms:.2f} / {gateway.load.p99_ms:.2f}",
            f"direct {direct16.load.p50_ms:.2f} / {direct16.load.p99_ms:.2f}",
        ),
        ("One connection: p50 ms", f"{via1.p50_ms:.3f}", f"direct {direct1.p50_ms:.3f}"),
        (
            "One connection: added median latency ms",
            f"{via1.p50_ms - direct1.p50_ms:.3f}",
            f"floor {floor1.p50_ms - direct1.p50_ms:.3f}; target ≤ 1.0",
        ),
        (
            "CPU per request, all gateway processes (ms)",
            f"{gateway.cpu_ms:.3f} (Envoy {gateway.envoy_cpu_ms:.3f})",
            f"floor {base.cpu_ms:.3f} (Envoy {base.envoy_cpu_ms:.3f}); target ≤ 0.5",
        ),
        (
            "RSS of all gateway processes (MB)",
            f"{gateway.rss_mb:.0f}",
            f"floor {base.rss_mb:.0f}; target ≤ 150",
        ),
        (
            f"{args.keys:,} keys in the store: requests/s, CPU ms per request",
            f"{with_keys.load.rps:,.0f}, {with_keys.cpu_ms:.3f}",
            f"1 key: {gateway.load.rps:,.0f}, {gateway.cpu_ms:.3f}",
        ),
        (
            f"{LARGE_PROMPT_BYTES // 1024} KiB prompt: requests/s, CPU ms per request",
            f"{prompt.load.rps:,.0f}, {prompt.cpu_ms:.3f}",
            f"{len(json.dumps(REQUEST))} B: {gateway.load.rps:,.0f}, {gateway.cpu_ms:.3f}",
        ),
        (
            f"Streams ({args.streams} concurrent x {STREAM_CHUNKS} chunks): added median TTFB ms",
            f"{ttfb_added:.2f}",
            "target ≤ 1",
        ),
        ("CPU per stream (ms)", f"{stream_cpu_ms:.2f}", "target ≤ 3"),
    ], figures


def _measured_figures(measured: Measured) -> dict[str, float]:
    return {
        "rps": round(measured.load.rps, 1),
        "p50_ms": measured.load.p50_ms,
        "p99_ms": measured.load.p99_ms,
        "cpu_ms_per_request": round(measured.cpu_ms, 4),
        "envoy_cpu_ms_per_request": round(measured.envoy_cpu_ms, 4),
        "rss_mb": round(measured.rss_mb, 1),
        "envoy_rss_mb": round(measured.envoy_rss_mb, 1),
    }


def ledger_batches(db: Path) -> dict[str, float]:
    """The usage batches (one transaction each) the gateway's ledger wrote to its store, and
    the seconds from the first to the last."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as store:
        count, first, last = store.execute(
            "SELECT count(*), min(written_at), max(written_at) FROM ledger_batches"
        ).fetchone()
    return {"batches": count, "seconds": round((last - first) if count else 0.0, 2)}


def collect_figures(
    args: argparse.Namespace,
    medians: dict[str, Measured],
    prompt: Measured,
    ttfb_added_ms: float,
    stream_cpu_ms: float,
    db: Path,
) -> dict[str, object]:
    """What the table shows, as numbers (bench/capacity.py reads them)."""
    floor1 = medians["floor1"].load.p50_ms
    direct1 = medians["direct1"].load.p50_ms
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "settings": {name: float(value) for name, value in DEFAULTS.items()},
        "gateway": _measured_figures(medians["gateway"]),
        "floor": _measured_figures(medians["floor"]),
        "direct": _measured_figures(medians["direct"]),
        "one_connection_added_ms": {
            "gateway": round(medians["gateway1"].load.p50_ms - direct1, 3),
            "floor": round(floor1 - direct1, 3),
        },
        "many_keys": {"keys": args.keys, **_measured_figures(medians["keys"])},
        "large_prompt": {"bytes": LARGE_PROMPT_BYTES, **_measured_figures(prompt)},
        "streams": {
            "concurrent": args.streams,
            "chunks": STREAM_CHUNKS,
            "added_ttfb_ms": round(ttfb_added_ms, 2),
            "cpu_ms_per_stream": round(stream_cpu_ms, 3),
        },
        "ledger": ledger_batches(db),
    }


# Keys the workers comparison takes in turn: enough that the ring hash gives each worker some.
WORKER_KEYS = 16


def compare_workers(
    args: argparse.Namespace, workdir: Path, upstream: str
) -> tuple[list[tuple[str, str, str]], dict[str, object]]:
    """`--workers 1` and `--workers 2` under the same load, interleaved rounds, medians kept."""
    script = wrk_script(workdir / "workers.lua", REQUEST)
    gateways = {
        count: Gateway(workdir / f"gw-workers-{count}", upstream, extra_env=DEFAULTS, workers=count)
        for count in (1, 2)
    }
    try:
        keys: dict[int, str] = {}
        pids: dict[int, list[int]] = {}
        for count, gateway in gateways.items():
            gateway.start()
            made = [gateway.create_key(f"bench-{index}") for index in range(WORKER_KEYS)]
            for key in made:
                gateway.wait_for_key(key)
            keys[count] = ",".join(made)
            wrk(f"{gateway.url}/v1/chat/completions", script, 16, 2, keys[count])
            pids[count] = process_tree(gateway.process.pid)  # type: ignore[union-attr]
        seconds = max(1, args.duration // ROUNDS)
        loads = {
            (count, connections): (
                lambda count=count, connections=connections: measured_load(
                    f"{gateways[count].url}/v1/chat/completions",
                    script,
                    keys[count],
                    pids[count],
                    seconds,
                    connections,
                )
            )
            for count in gateways
            for connections in (16, 1)
        }
        names = list(loads)
        rounds: dict[tuple[int, int], list[Measured]] = {name: [] for name in names}
        for turn in range(ROUNDS):
            for name in names[turn:] + names[:turn]:
                rounds[name].append(loads[name]())
        medians = {name: median_measured(measured) for name, measured in rounds.items()}
    finally:
        for gateway in gateways.values():
            gateway.stop()
    one, two = medians[(1, 16)], medians[(2, 16)]
    one1, two1 = medians[(1, 1)].load, medians[(2, 1)].load
    rows = [
        (
            "Workers 2 vs 1, 16 connections: requests/s",
            f"{two.load.rps:,.0f}",
            f"1 worker {one.load.rps:,.0f}; ratio {two.load.rps / one.load.rps:.2f}",
        ),
        (
            "Workers 2 vs 1: CPU per request, all processes (ms)",
            f"{two.cpu_ms:.3f}",
            f"1 worker {one.cpu_ms:.3f}; ratio {two.cpu_ms / one.cpu_ms:.2f}; target ≤ 1.10",
        ),
        (
            "Workers 2 vs 1: RSS of all gateway processes (MB)",
            f"{two.rss_mb:.0f}",
            f"1 worker {one.rss_mb:.0f}",
        ),
        (
            "Workers 2 vs 1, one connection: p50 ms",
            f"{two1.p50_ms:.3f}",
            f"1 worker {one1.p50_ms:.3f}",
        ),
    ]
    figures = {
        f"workers_{count}": {
            **_measured_figures(medians[(count, 16)]),
            "one_connection_p50_ms": round(medians[(count, 1)].load.p50_ms, 3),
        }
        for count in (1, 2)
    }
    return rows, figures


def print_table(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(row[0]) for row in rows)
    print(f"| {'measure'.ljust(width)} | gateway | reference |")
    print(f"|{'-' * (width + 2)}|---------|-----------|")
    for name, value, reference in rows:
        print(f"| {name.ljust(width)} | {value} | {reference} |")


if __name__ == "__main__":
    main()
