"""Benchmark: the CPU a streamed chat completion costs the gateway, Envoy and Python apart.

Starts bench/paced_upstream.py (an SSE stream of --chunks chunks, --interval seconds apart,
each its own write), the gateway with the default settings and, for reference, the floor
(bench/floor_backend.py behind the gateway's Envoy config: one gRPC message per upstream read,
no gateway feature) and a bare Envoy that passes the same stream through as HTTP. Rounds of --streams concurrent streams run in a
rotating order (direct, gateway, floor, pass-through; a noisy neighbour slows each alike); each
round's CPU of a target's processes, from /proc/PID/task/*/schedstat (nanoseconds, where
/proc/PID/stat counts 10 ms ticks), is divided by its streams. Then time to the first `data:`
byte at one connection, streams one after another, interleaved the same way. Prints medians
and the spread (first and third quartiles) over the rounds.

`--baseline DIR` adds a second gateway run from the source checkout in DIR (its service/ on
PYTHONPATH, so its Envoy config and Lua filter too), interleaved with the first: before and
after in one run, under the same neighbours.

    python bench/streams.py [--streams 16] [--rounds 40] [--chunks 20] [--interval 0.01]
        [--ttfb 60] [--baseline /tmp/typegpt-before]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gateway_process import Gateway, free_port  # noqa: E402
from run import DEFAULTS, FLOOR_KEY, REQUEST, Floor, is_envoy, process_tree, streams  # noqa: E402

from typegpt_gateway.process import envoy  # noqa: E402

PATH = "/v1/chat/completions"

BARE_ENVOY_CONFIG = """
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}
"""


def cpu_ns(pids: list[int]) -> int:
    """CPU time the live threads of `pids` have used, in nanoseconds."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended just now
                total += int((task / "schedstat").read_text().split()[0])
    return total


@dataclass
class Target:
    name: str
    port: int
    key: str | None
    pids: list[int]
    envoy_ms: list[float] = field(default_factory=list)
    python_ms: list[float] = field(default_factory=list)
    ttfb_ms: list[float] = field(default_factory=list)

    def round(self, concurrent: int) -> None:
        envoys = [pid for pid in self.pids if is_envoy(pid)]
        others = [pid for pid in self.pids if pid not in envoys]
        envoy_before, python_before = cpu_ns(envoys), cpu_ns(others)
        asyncio.run(streams(self.port, PATH, self.key, concurrent, 1))
        self.envoy_ms.append((cpu_ns(envoys) - envoy_before) / 1e6 / concurrent)
        self.python_ms.append((cpu_ns(others) - python_before) / 1e6 / concurrent)

    def first_byte(self) -> None:
        self.ttfb_ms += [
            ttfb * 1000 for ttfb in asyncio.run(streams(self.port, PATH, self.key, 1, 1))
        ]


def spread(values: list[float]) -> str:
    if len(values) < 4:
        return f"{statistics.median(values):.2f}"
    low, middle, high = statistics.quantiles(values, n=4)
    return f"{middle:.2f} ({low:.2f} - {high:.2f})"


def interleaved(targets: list[Target], rounds: int, run: Callable[[Target], None]) -> None:
    for turn in range(rounds):
        shift = turn % len(targets)
        for target in targets[shift:] + targets[:shift]:
            run(target)


def gateway(
    workdir: Path, upstream: str, source: Path | None, flush_interval: float = 0.0
) -> tuple[Gateway, str]:
    env = dict(DEFAULTS, GATEWAY_STREAM_FLUSH_INTERVAL=str(flush_interval))
    if source is not None:
        env["PYTHONPATH"] = str(source / "service")
    started = Gateway(workdir, upstream, extra_env=env).start()
    return started, started.wait_for_key(started.create_key("bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per round")
    parser.add_argument("--rounds", type=int, default=40, help="rounds per target")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between chunks")
    parser.add_argument("--ttfb", type=int, default=60, help="single streams per target")
    parser.add_argument("--baseline", type=Path, help="a source checkout to measure alongside")
    parser.add_argument(
        "--flush-interval",
        type=float,
        action="append",
        default=[],
        help="also a gateway with this GATEWAY_STREAM_FLUSH_INTERVAL (seconds; repeatable)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="typegpt-streams-") as tmp:
        workdir = Path(tmp)
        upstream_port, through_port = free_port(), free_port()
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "bench" / "paced_upstream.py"),
                    f"--port={upstream_port}",
                    f"--chunks={args.chunks}",
                    f"--interval={args.interval}",
                ]
            )
        ]
        gateways: list[Gateway] = []
        floor: Floor | None = None
        try:
            config = workdir / "pass-through.yaml"
            config.write_text(
                BARE_ENVOY_CONFIG.format(port=through_port, upstream_port=upstream_port)
            )
            processes.append(
                subprocess.Popen(
                    [
                        str(envoy.binary()),
                        *("-c", str(config), "--concurrency", "1", "--disable-hot-restart"),
                        *("--log-level", "error"),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            _wait_for(f"http://127.0.0.1:{upstream_port}{PATH}")
            _wait_for(f"http://127.0.0.1:{through_port}{PATH}")
            upstream = f"http://127.0.0.1:{upstream_port}/v1"
            after, key = gateway(workdir / "gateway", upstream, None)
            gateways.append(after)
            (workdir / "floor").mkdir()
            floor = Floor(workdir / "floor", upstream)
            targets = [
                Target("direct", upstream_port, None, []),
                Target("gateway", after.http_port, key, process_tree(after.process.pid)),  # type: ignore[union-attr]
                Target("floor", floor.http_port, FLOOR_KEY, floor.pids),
                Target("envoy pass-through", through_port, None, [processes[1].pid]),
            ]
            for interval in args.flush_interval:
                flushing, flushing_key = gateway(
                    workdir / f"flush-{interval}", upstream, None, interval
                )
                gateways.append(flushing)
                pids = process_tree(flushing.process.pid)  # type: ignore[union-attr]
                name = f"gateway, flush interval {interval * 1000:g} ms"
                targets.insert(2, Target(name, flushing.http_port, flushing_key, pids))
            if args.baseline is not None:
                before, before_key = gateway(workdir / "baseline", upstream, args.baseline)
                gateways.append(before)
                pids = process_tree(before.process.pid)  # type: ignore[union-attr]
                targets.insert(1, Target("baseline", before.http_port, before_key, pids))
            interleaved(targets, 2, lambda target: target.round(args.streams))  # warm-up
            for target in targets:
                target.envoy_ms.clear()
                target.python_ms.clear()
            interleaved(targets, args.rounds, lambda target: target.round(args.streams))
            interleaved(targets, args.ttfb, Target.first_byte)
        finally:
            if floor is not None:
                floor.stop()
            for started in gateways:
                started.stop()
            for process in reversed(processes):
                process.terminate()
                process.wait()

    print(
        f"{args.streams} concurrent streams of {args.chunks} chunks {args.interval * 1000:g} ms "
        f"apart, {args.rounds} rounds each; CPU ms per stream and TTFB ms at one connection "
        f"({args.ttfb} streams each): median (first - third quartile)"
    )
    print("| target | CPU, Envoy + Python | Envoy | Python | TTFB |")
    print("|---|---|---|---|---|")
    for target in targets:
        total = [e + p for e, p in zip(target.envoy_ms, target.python_ms, strict=True)]
        cpu = (spread(total), spread(target.envoy_ms), spread(target.python_ms))
        if not target.pids:
            cpu = ("", "", "")
        print(f"| {target.name} | {' | '.join(cpu)} | {spread(target.ttfb_ms)} |")


def _wait_for(url: str) -> None:
    body = json.dumps({**REQUEST, "stream": True})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with httpx.stream("POST", url, content=body, timeout=2) as response:
                if response.status_code == 200:
                    response.read()
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within 30 s")


if __name__ == "__main__":
    main()
