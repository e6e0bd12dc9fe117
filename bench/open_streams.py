"""Benchmark: the memory an open stream holds in the gateway, Envoy and Python apart.

Starts an upstream on 127.0.0.1 that answers each streamed request with its first chunk and
then holds the stream open, and the gateway with the default settings. Opens --streams
streams in steps of --step, each held after its first `data:` byte, and reads the RSS of
Envoy and of the Python backend (from /proc) at every step; the slope of RSS over open
streams, by least squares, is the memory per open stream. Then lets every stream end.

    python bench/open_streams.py [--streams 600] [--step 150] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from gateway_process import Gateway  # noqa: E402
from paced_upstream import chunk_event  # noqa: E402
from run import DEFAULTS, REQUEST, is_envoy, process_tree, rss_mb  # noqa: E402

PATH = "/v1/chat/completions"


class HeldUpstream:
    """Sends each stream's first chunk, then nothing until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + _frame(f"data: {chunk_event(0)}\n\n")
                )
                await writer.drain()
                await self.release.wait()
                writer.write(_frame("data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _frame(text: str) -> bytes:
    data = text.encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _open_stream(port: int, key: str, opened: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({**REQUEST, "stream": True}).encode()
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    buffer = b""
    while chunk := await reader.read(65536):
        buffer += chunk
        if b"data: " in buffer:
            opened.set()
        if b"data: [DONE]" in buffer:
            break
    writer.close()
    if b"data: [DONE]" not in buffer:
        raise RuntimeError(f"a stream did not complete: {buffer[:300]!r}")


def _slope(xs: list[int], ys: list[float]) -> float:
    return statistics.linear_regression(xs, ys).slope


async def measure(streams: int, step: int, workdir: Path) -> dict[str, object]:
    upstream = HeldUpstream()
    port = await upstream.start()
    gateway = Gateway(workdir, f"http://127.0.0.1:{port}/v1", extra_env=DEFAULTS)
    gateway.workdir.mkdir(parents=True)
    await asyncio.to_thread(gateway.start)
    tasks: list[asyncio.Task[None]] = []
    try:
        key = await asyncio.to_thread(lambda: gateway.wait_for_key(gateway.create_key("bench")))
        pids = process_tree(gateway.process.pid)  # type: ignore[union-attr]
        envoys = [pid for pid in pids if is_envoy(pid)]
        python = [pid for pid in pids if pid not in envoys]
        # A first stream warms pools and lazy imports; it is not counted.
        upstream.release.set()
        await _open_stream(gateway.http_port, key, asyncio.Event())
        upstream.release.clear()
        counts: list[int] = []
        envoy_mb: list[float] = []
        python_mb: list[float] = []
        for target in range(0, streams + 1, step):
            while len(tasks) < target:
                opened = asyncio.Event()
                tasks.append(asyncio.create_task(_open_stream(gateway.http_port, key, opened)))
                await asyncio.wait_for(opened.wait(), 30)
            counts.append(len(tasks))
            envoy_mb.append(rss_mb(envoys))
            python_mb.append(rss_mb(python))
        upstream.release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(gateway.stop)
    envoy_kb, python_kb = _slope(counts, envoy_mb) * 1000, _slope(counts, python_mb) * 1000
    print(f"open streams      {', '.join(str(count) for count in counts)}")
    print(f"Envoy RSS MB      {', '.join(f'{mb:.1f}' for mb in envoy_mb)}")
    print(f"Python RSS MB     {', '.join(f'{mb:.1f}' for mb in python_mb)}")
    print(
        f"per open stream   Envoy {envoy_kb:.1f} kB + Python {python_kb:.1f} kB "
        f"= {envoy_kb + python_kb:.1f} kB"
    )
    return {
        "open_streams": counts,
        "envoy_rss_mb": envoy_mb,
        "python_rss_mb": python_mb,
        "envoy_kb_per_stream": round(envoy_kb, 1),
        "python_kb_per_stream": round(python_kb, 1),
        "kb_per_stream": round(envoy_kb + python_kb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=600, help="streams open at the end")
    parser.add_argument("--step", type=int, default=150, help="streams opened between readings")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not 0 < args.step <= args.streams:
        parser.error("--step must be between 1 and --streams")
    with tempfile.TemporaryDirectory(prefix="typegpt-bench-") as tmp:
        figures = asyncio.run(measure(args.streams, args.step, Path(tmp) / "gw"))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
