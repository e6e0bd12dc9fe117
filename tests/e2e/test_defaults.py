"""What a gateway started with no more than the quick start's settings exposes: the direct gRPC
and metrics ports on loopback only, no secret in Envoy's environment, no client key under a name
the logs and metrics give their own meaning, and one credential per call."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from gateway_process import ADMIN_KEY, UPSTREAM_KEY, Gateway
from openai_shape import assert_error

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc, keys_pb2, keys_pb2_grpc
from typegpt_gateway.process.envoy import ENVOY_ENV_NAMES, ENVOY_ENV_PREFIXES

RPC_TIMEOUT = 10.0
# Another loopback address: a port bound to every interface answers on it, one bound to
# 127.0.0.1 does not.
OTHER_LOOPBACK = "127.0.0.2"
# Passed to the gateway as if it were one more credential of the operator's environment.
OTHER_SECRET = ("SOME_DATABASE_PASSWORD", "pw-SECRET-0123456789")


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    gw = Gateway(
        tmp_path_factory.mktemp("defaults"),
        upstream.base_url,
        extra_env=dict([OTHER_SECRET]),
    ).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.wait_for_key(gateway.create_key("defaults-client"))


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def test_grpc_and_metrics_ports_listen_on_loopback_only(gateway: Gateway) -> None:
    for port in (gateway.grpc_port, gateway.metrics_port):
        assert _accepts("127.0.0.1", port)
        assert not _accepts(OTHER_LOOPBACK, port), f"port {port} listens beyond 127.0.0.1"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _envoy_environment(gateway: Gateway) -> dict[str, str]:
    assert gateway.process is not None
    for pid in _children(gateway.process.pid):
        if b"--config-path" in Path(f"/proc/{pid}/cmdline").read_bytes():
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
            return {name.decode(): value.decode() for name, _, value in pairs}
    raise AssertionError("no Envoy process under the gateway")


def test_envoy_inherits_no_secret(gateway: Gateway) -> None:
    environment = _envoy_environment(gateway)
    for secret in (UPSTREAM_KEY, ADMIN_KEY, OTHER_SECRET[1]):
        assert secret not in "\0".join(environment.values())
    for name in environment:
        assert name in ENVOY_ENV_NAMES or name.startswith(ENVOY_ENV_PREFIXES), name
    assert "PATH" in environment


def test_reserved_names_are_refused_by_the_cli(gateway: Gateway) -> None:
    # Which names are reserved, in any case, is tests/keystore/test_keyadmin.py's; one name
    # shows that the CLI asks the same rule (each CLI call is a process of its own).
    name = "ADMIN"
    result = gateway.cli("keys", "create", "--name", name, check=False)
    assert result.returncode != 0
    assert "reserved" in result.stderr, result.stderr
    listed = gateway.cli("keys", "list").stdout
    assert f" {name} " not in listed and not listed.startswith(f"{name} ")


@pytest.mark.parametrize("name", ["admin", "Unknown"])
def test_reserved_names_are_refused_by_the_admin_api(gateway: Gateway, name: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/admin/keys",
        json={"name": name},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == "name"
    assert "reserved" in error["message"]
    with (
        grpc.insecure_channel(gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        keys_pb2_grpc.KeyServiceStub(channel).CreateKey(
            keys_pb2.CreateKeyRequest(name=name),
            metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
            timeout=RPC_TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _http_status(error: grpc.RpcError) -> tuple[str | None, dict[str, object]]:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return trailers.get("x-http-status"), json.loads(trailers.get("x-openai-error", "{}"))


@pytest.mark.parametrize("port", ["grpc", "envoy"])
def test_two_authorizations_are_refused(gateway: Gateway, key: str, port: str) -> None:
    """On the direct gRPC port, and as native gRPC through Envoy's."""
    other = gateway.wait_for_key(gateway.create_key(f"defaults-other-{port}"))
    target = gateway.grpc_target if port == "grpc" else gateway.http_target
    calls = {
        "ChatService/ListModels": lambda channel, metadata: chat_pb2_grpc.ChatServiceStub(
            channel
        ).ListModels(chat_pb2.ListModelsRequest(), metadata=metadata, timeout=RPC_TIMEOUT),
        "KeyService/ListKeys": lambda channel, metadata: keys_pb2_grpc.KeyServiceStub(
            channel
        ).ListKeys(keys_pb2.ListKeysRequest(), metadata=metadata, timeout=RPC_TIMEOUT),
    }
    pairs = [(key, other), (ADMIN_KEY, key), (key, ADMIN_KEY)]
    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        for route, call in calls.items():
            for first, second in pairs:
                metadata = (
                    ("authorization", f"Bearer {first}"),
                    ("authorization", f"Bearer {second}"),
                )
                with pytest.raises(grpc.RpcError) as caught:
                    call(channel, metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, route
                status, body = _http_status(caught.value)
                assert status == "401", route
                assert body["error"]["type"] == "authentication_error", body  # type: ignore[index]
    assert time.monotonic() - started < 60
