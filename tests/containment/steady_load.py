"""Well-behaved clients for the containment suite: a steady load of several keys, streamed and
not, each answer checked whole, while a test makes one fault or one misbehaving client act.

    with SteadyLoad(gateway, keys) as load:
        ...  # the fault
        load.wait_for(200)
    assert load.failures == [] and load.succeeded >= 200

Every loop is bounded in count and in time; only loopback addresses are used.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fake_upstream import DEFAULT_CONTENT, DEFAULT_STREAM_PIECES
from gateway_process import Gateway

CHAT = "/v1/chat/completions"
# Bounds of the load itself, whatever the test does: it stops by itself.
MAX_REQUESTS_PER_CLIENT = 5_000
MAX_SECONDS = 120.0
STREAMED_CONTENT = "".join(DEFAULT_STREAM_PIECES)


def well_behaved_body(number: int, *, stream: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": f"A polite question, number {number}."}],
    }
    if stream:
        body["stream"] = True
    return body


# How a failure begins when the client got no answer at all (see SteadyLoad._ask).
NO_ANSWER = "no answer: "


@dataclass
class SteadyLoad:
    gateway: Gateway
    keys: list[str]
    # Clients per key; every other request of a client is streamed.
    clients_per_key: int = 1
    timeout: float = 30.0
    sent: int = 0
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # Per key: answers that were whole and right, and the slowest of them (seconds).
    succeeded_by_key: Counter[str] = field(default_factory=Counter)
    slowest_by_key: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> SteadyLoad:
        for key in self.keys:
            for _ in range(self.clients_per_key):
                thread = threading.Thread(target=self._client, args=(key,), daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def wait_for(self, requests: int, timeout: float = 60.0) -> None:
        """Until `requests` more answers came back (or `timeout` passed: the test's asserts
        on the counts then tell)."""
        with self._lock:
            target = self.sent + requests
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.sent >= target:
                    return
            time.sleep(0.05)

    def _client(self, key: str) -> None:
        headers = {"authorization": f"Bearer {key}"}
        ends = time.monotonic() + MAX_SECONDS
        with httpx.Client(base_url=self.gateway.url, headers=headers, timeout=self.timeout) as http:
            for number in range(MAX_REQUESTS_PER_CLIENT):
                if self._stop.is_set() or time.monotonic() > ends:
                    return
                stream = number % 2 == 1
                began = time.monotonic()
                try:
                    problem = self._ask(http, number, stream=stream)
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                took = time.monotonic() - began
                with self._lock:
                    self.sent += 1
                    if problem is None:
                        self.succeeded += 1
                        self.succeeded_by_key[key] += 1
                        self.latencies.append(took)
                        self.slowest_by_key[key] = max(self.slowest_by_key.get(key, 0.0), took)
                    else:
                        self.failures.append(f"{'stream' if stream else 'json'}: {problem}")

    @staticmethod
    def _ask(http: httpx.Client, number: int, *, stream: bool) -> str | None:
        """None when the answer is whole and right, else what was wrong."""
        body = well_behaved_body(number, stream=stream)
        try:
            response = http.send(http.build_request("POST", CHAT, json=body), stream=True)
        except httpx.HTTPError as exc:
            # Refused, closed or reset before any answer began: told apart from an answer
            # cut short, which the reading below raises.
            return f"{NO_ANSWER}{type(exc).__name__}: {exc}"
        try:
            if not stream:
                response.read()
                if response.status_code != 200:
                    return f"{response.status_code} {response.text[:300]}"
                content = response.json()["choices"][0]["message"]["content"]
                return None if content == DEFAULT_CONTENT else f"content {content!r}"
            if response.status_code != 200:
                response.read()
                return f"{response.status_code} {response.text[:300]}"
            pieces, done = [], False
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    return f"error frame {data[:300]}"
                for choice in chunk.get("choices") or ():
                    pieces.append(choice.get("delta", {}).get("content") or "")
            text = "".join(pieces)
            if not done or text != STREAMED_CONTENT:
                return f"stream ended (done={done}) with {text!r}"
        finally:
            response.close()
        return None

    def median_latency(self) -> float:
        with self._lock:
            ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2] if ordered else float("nan")


# What one fault or one misbehaving client may add to the gateway's backend process, at most,
# on top of what serving the well-behaved clients holds (README, "Failure containment").
MAX_RSS_GROWTH = 40 * 1024 * 1024
MAX_THREAD_GROWTH = 4
MAX_FD_GROWTH = 16
MAX_SERIES_GROWTH = 30


@dataclass(frozen=True)
class Footprint:
    """What a process holds: resident memory, threads and open files."""

    rss_bytes: int
    threads: int
    open_files: int

    @classmethod
    def of(cls, pid: int) -> Footprint:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return cls(
            rss_bytes=int(fields["VmRSS"].split()[0]) * 1024,
            threads=int(fields["Threads"]),
            open_files=len(os.listdir(f"/proc/{pid}/fd")),
        )


def series_count(gateway: Gateway) -> int:
    """Sample lines on the gateway's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@dataclass(frozen=True)
class Reading:
    """The backend process's footprint and the gateway's metric series, at one moment."""

    footprint: Footprint
    series: int

    @classmethod
    def of(cls, gateway: Gateway) -> Reading:
        assert gateway.process is not None
        return cls(Footprint.of(gateway.process.pid), series_count(gateway))


def assert_contained(
    case: str,
    load: SteadyLoad,
    before: Reading,
    after: Reading,
    detail: str = "",
    *,
    max_fd_growth: int = MAX_FD_GROWTH,
    max_rss_growth: int = MAX_RSS_GROWTH,
) -> None:
    """Every well-behaved request was served, and the backend stayed within the bounds.
    Prints the figures first (`pytest -s` shows them: the README's table comes from them)."""
    print(
        f"\n[containment] {case}: well-behaved {load.succeeded}/{load.sent} ok; "
        f"RSS {before.footprint.rss_bytes / 2**20:.0f} -> {after.footprint.rss_bytes / 2**20:.0f}"
        f" MiB; threads {before.footprint.threads} -> {after.footprint.threads}; "
        f"files {before.footprint.open_files} -> {after.footprint.open_files}; "
        f"series {before.series} -> {after.series}" + (f"; {detail}" if detail else "")
    )
    assert load.failures == [], load.failures[:5]
    grown = (
        after.footprint.rss_bytes - before.footprint.rss_bytes,
        after.footprint.threads - before.footprint.threads,
        after.footprint.open_files - before.footprint.open_files,
        after.series - before.series,
    )
    bounds = (max_rss_growth, MAX_THREAD_GROWTH, max_fd_growth, MAX_SERIES_GROWTH)
    names = ("RSS", "threads", "open files", "series")
    for name, growth, bound in zip(names, grown, bounds, strict=True):
        assert growth <= bound, f"{name} grew by {growth}, more than {bound}"
