"""Readiness says whether this process can serve: its key store and Redis answer, and it is not
draining. A hung dependency pins one thread however often it is probed, and grpc.health.v1
follows the same answer."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai_shape import assert_error

from typegpt.gateway.v1 import status_pb2, status_pb2_grpc
from typegpt_gateway.limits.redis_backend import RedisBackend
from typegpt_gateway.process import readiness
from typegpt_gateway.process.backend import start_backend
from typegpt_gateway.process.readiness import ReadinessProbe, in_thread, rate_limits_check
from typegpt_gateway.settings import Settings


def test_a_hung_check_runs_once_however_many_probes_ask(monkeypatch):
    monkeypatch.setattr(readiness, "CHECK_TIMEOUT", 0.2)
    release = threading.Event()
    calls = 0

    def hung() -> str | None:
        nonlocal calls
        calls += 1
        release.wait(10)
        return None

    async def scenario() -> tuple[list[str | None], int]:
        probe = ReadinessProbe(in_thread(hung, "the key store"))
        answers = list(await asyncio.gather(*(probe.problem() for _ in range(20))))
        answers.append(await probe.problem())  # a later probe joins the same check
        threads = threading.active_count()
        release.set()
        await asyncio.sleep(0.05)
        assert await probe.problem() is None  # once it answers, the next probe checks anew
        await probe.aclose()
        return answers, threads

    answers, threads = asyncio.run(scenario())
    assert calls == 2  # the hung one, and one after it answered
    assert set(answers) == {"the key store did not answer within 0.2 s"}
    assert threads < 10


def test_draining_is_not_ready_without_asking_anything():
    async def never() -> str | None:
        raise AssertionError("not asked while draining")

    probe = ReadinessProbe(never)
    probe.draining = True
    assert asyncio.run(probe.problem()) == "draining"


def test_begin_drain_turns_health_and_readiness_before_anything_stops(tmp_path, upstream):
    """In process: after begin_drain the server still answers, and says it is not ready."""

    async def main() -> None:
        settings = Settings(
            TYPEGPT_BASE_URL=upstream.base_url,
            db=tmp_path / "k.db",
            grpc_host="127.0.0.1",
            grpc_port=0,
        )
        backend = await start_backend(settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                status = status_pb2_grpc.StatusServiceStub(channel)
                serving = health_pb2.HealthCheckResponse.SERVING
                assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving
                await backend.begin_drain()
                reply = await health.Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                    await status.GetReadiness(status_pb2.GetReadinessRequest())
                assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await backend.stop(0)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_redis_check_follows_a_paused_and_resumed_redis(redis_server):
    assert redis_server.process is not None
    pid = redis_server.process.pid

    async def scenario() -> tuple[str | None, str | None, str | None]:
        backend = RedisBackend(redis_server.url, timeout=0.3)
        check = rate_limits_check(backend)
        before = await check()
        os.kill(pid, signal.SIGSTOP)
        try:
            during = await check()
        finally:
            os.kill(pid, signal.SIGCONT)
        after = await check()
        await backend.aclose()
        return before, during, after

    before, during, after = asyncio.run(scenario())
    assert before is None and after is None
    assert during is not None and during.startswith("Redis cannot be reached (")


def _grpc_health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        return reply.status


def _wait_for_grpc_health(target: str, status: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _grpc_health(target) == status:
            return True
        time.sleep(0.2)
    return False


def test_readiness_and_grpc_health_follow_the_key_store(make_gateway):
    gw = make_gateway().start()
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    assert _grpc_health(gw.grpc_target) == serving
    moved = gw.db.with_suffix(".moved")
    gw.db.rename(moved)
    try:
        assert "key store" in assert_error(httpx.get(f"{gw.url}/readyz"), 503)["message"]
        assert _wait_for_grpc_health(gw.grpc_target, not_serving)
    finally:
        moved.rename(gw.db)
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    assert _wait_for_grpc_health(gw.grpc_target, serving)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_an_unreachable_redis_is_not_ready(make_gateway, mode):
    from gateway_process import free_port

    gw = make_gateway(
        extra_env={
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "GATEWAY_REDIS_TIMEOUT": "0.3",
            "GATEWAY_RATE_LIMIT_FAILURE_MODE": mode,
        }
    ).start()
    error = assert_error(httpx.get(f"{gw.url}/readyz"), 503)
    assert error["message"].startswith("Not ready: Redis cannot be reached (")
    assert httpx.get(f"{gw.url}/healthz").status_code == 200
