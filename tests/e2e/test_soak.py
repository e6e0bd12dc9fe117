"""A bounded soak: 50 concurrent streams for ~15 s through the real gateway (Envoy + gRPC
server) across two fake upstreams that fail at random, before and during their answers.

It must end with no hung request, no 5xx that a retry should have absorbed (every fault before
an answer's first byte is retryable), exactly one error frame per stream an upstream broke
mid-way, and nothing left behind: connections and tasks back to what idle pools explain.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeUpstream, Reply, make_stream_chunks
from gateway_process import Gateway

pytestmark = pytest.mark.soak

CONCURRENCY = 50
DURATION = 15.0
CLIENT_TIMEOUT = 20.0
# Each fake gets more scripted replies than the soak can use; the rest is the default answer.
REPLIES_PER_UPSTREAM = 3000
FAULT_RATE = 0.08


def scripted_replies(rng: random.Random) -> list[Reply]:
    """Random replies: mostly good streams, some slow, FAULT_RATE of them faults."""
    chunks = make_stream_chunks(model="gpt-4o")
    replies: list[Reply] = []
    for _ in range(REPLIES_PER_UPSTREAM):
        roll = rng.random()
        if roll < FAULT_RATE:
            fault = rng.choice(["500", "502", "503", "429", "reset", "break"])
            if fault == "reset":
                replies.append(Reply.reset())
            elif fault == "break":
                replies.append(Reply.stream_then_break(chunks[:2], delay=0.05))
            else:
                replies.append(Reply.json(int(fault)))
        elif roll < FAULT_RATE + 0.1:
            # Slow but within every limit: a late first byte, then slow chunks.
            replies.append(Reply.stream(chunks, first_delay=0.6, delay=0.15))
        else:
            replies.append(Reply.stream(chunks, delay=rng.uniform(0.02, 0.1)))
    return replies


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def client_loop(
    gw: Gateway, key: str, deadline: float, outcomes: Counter[str], errors: list[str]
) -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "soak"}],
    }
    async with httpx.AsyncClient(
        base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=CLIENT_TIMEOUT
    ) as client:
        for _ in range(10_000):  # bounded; the deadline ends it long before
            if time.monotonic() >= deadline:
                return
            try:
                async with asyncio.timeout(CLIENT_TIMEOUT):
                    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        text = (await response.aread()).decode()
            except TimeoutError:
                outcomes["hung"] += 1
                continue
            except httpx.HTTPError as exc:
                outcomes["transport_error"] += 1
                errors.append(repr(exc))
                continue
            if response.status_code != 200:
                outcomes[f"http_{response.status_code}"] += 1
                errors.insert(0, text[:300])
                continue
            payloads = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
            if payloads and payloads[-1] == "[DONE]":
                outcomes["done"] += 1
            elif payloads and '"error"' in payloads[-1]:
                outcomes["error_frame"] += 1
                errors.append(json.loads(payloads[-1])["error"]["message"])
            else:
                outcomes["truncated"] += 1


def test_soak_with_random_upstream_faults(tmp_path: Path) -> None:
    rng = random.Random(20240604)
    with FakeUpstream() as a, FakeUpstream() as b:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            "upstreams:\n"
            f"  - {{name: a, base_url: '{a.base_url}', api_key: sk-soak-a}}\n"
            f"  - {{name: b, base_url: '{b.base_url}', api_key: sk-soak-b}}\n"
        )
        gw = Gateway(
            tmp_path / "gw",
            "http://127.0.0.1:9/unused",
            extra_env={
                "GATEWAY_CONFIG": str(config),
                # Five attempts make a request whose every attempt hits a fault (8% each)
                # a one-in-a-million event: any 5xx is then a bug, not bad luck.
                "GATEWAY_UPSTREAM_MAX_ATTEMPTS": "5",
                "GATEWAY_UPSTREAM_RETRY_BACKOFF": "0.05",
                "GATEWAY_UPSTREAM_RETRY_BACKOFF_MAX": "0.5",
                "GATEWAY_SSE_KEEPALIVE_INTERVAL": "0.5",
            },
        )
        (tmp_path / "gw").mkdir()
        key = gw.create_key("soak")
        gw.start()
        try:
            assert gw.process is not None
            pid = gw.process.pid
            # Warm up: pools, Envoy workers and the gRPC server at full concurrency.
            warm: Counter[str] = Counter()
            asyncio.run(_run(gw, key, 2.0, warm, []))
            assert set(warm) == {"done"}, warm
            # Sockets to the upstreams are the pools' business; all others must not grow.
            other_fds_before = fd_count(pid) - a.open_connections - b.open_connections

            scripts = {}
            for fake in (a, b):
                replies = scripted_replies(rng)
                scripts[fake] = replies
                fake.reset_state()
                fake.enqueue(*replies)

            outcomes: Counter[str] = Counter()
            errors: list[str] = []
            began = time.monotonic()
            asyncio.run(_run(gw, key, DURATION, outcomes, errors))
            elapsed = time.monotonic() - began

            breaks = 0
            for fake, replies in scripts.items():
                used = len(replies) - fake.pending_replies
                assert used < len(replies), "the script ran out: raise REPLIES_PER_UPSTREAM"
                breaks += sum(
                    1 for reply in replies[:used] if reply.kind == "stream" and not reply.done
                )
            faults = {
                fake.port: Counter(
                    reply.status if reply.kind == "json" else reply.kind
                    for reply in replies[: len(replies) - fake.pending_replies]
                    if reply.kind in ("json", "reset") or not reply.done
                )
                for fake, replies in scripts.items()
            }
            print(f"\nsoak: {dict(outcomes)} in {elapsed:.1f}s; faults played: {faults}")

            assert elapsed < DURATION + CLIENT_TIMEOUT
            assert outcomes["done"] > 200
            # Every stream ended: with [DONE], or with the error frame of a mid-way break.
            assert outcomes["error_frame"] == breaks, errors[:5]
            assert set(outcomes) <= {"done", "error_frame"}, (outcomes, errors[:5])

            # Nothing left behind: the fakes see only the gateway's idle pooled connections,
            # and the gateway holds no socket beyond them.
            time.sleep(1.0)
            for fake in (a, b):
                assert fake.open_connections <= CONCURRENCY
            other_fds_after = fd_count(pid) - a.open_connections - b.open_connections
            assert other_fds_after <= other_fds_before + 5, (other_fds_after, other_fds_before)
        finally:
            if gw.process is not None and gw.process.poll() is None:
                gw.process.send_signal(signal.SIGTERM)
                assert gw.process.wait(30) == 0
            gw.stop()
        assert "stopped; 0 tasks left" in gw.log(), gw.log()[-2000:]


async def _run(
    gw: Gateway, key: str, duration: float, outcomes: Counter[str], errors: list[str]
) -> None:
    deadline = time.monotonic() + duration
    await asyncio.gather(
        *(client_loop(gw, key, deadline, outcomes, errors) for _ in range(CONCURRENCY))
    )
