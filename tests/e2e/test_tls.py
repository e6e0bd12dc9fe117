"""HTTPS on the HTTP port (Envoy terminates TLS) and optional TLS on the direct gRPC port, with
a certificate made in the test and the official openai SDK trusting only its CA."""

from __future__ import annotations

import ssl
import subprocess

import grpc
import httpx
import openai
import pytest
from gateway_process import CLI, Gateway
from tls_certs import ServerCertificate, make_server_certificate

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

RPC_TIMEOUT = 10.0
MESSAGES = [{"role": "user", "content": "Hello over TLS"}]


@pytest.fixture
def certificate(tmp_path) -> ServerCertificate:
    return make_server_certificate(tmp_path / "certs")


@pytest.fixture
def https_gateway(make_gateway, certificate) -> Gateway:
    gw = make_gateway(
        ca_file=certificate.ca,
        extra_env={
            "GATEWAY_TLS_CERT": str(certificate.cert),
            "GATEWAY_TLS_KEY": str(certificate.key),
        },
    )
    return gw.start()


def test_openai_sdk_over_https_trusting_the_test_ca(https_gateway, certificate):
    key = https_gateway.create_key("tls-client")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(certificate.ca))) as http:
        client = openai.OpenAI(
            base_url=f"{https_gateway.url}/v1", api_key=key, http_client=http, max_retries=0
        )
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        assert raw.http_request.url.scheme == "https"
        assert raw.parse().choices[0].message.content
        assert raw.headers["x-request-id"]
        stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert [model.id for model in client.models.list()][:1] == ["gpt-4o"]


def test_a_client_that_does_not_trust_the_certificate_is_refused(https_gateway):
    client = openai.OpenAI(base_url=f"{https_gateway.url}/v1", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_plain_http_gets_no_answer_on_the_https_port(https_gateway):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{https_gateway.http_port}/healthz", timeout=5)


def test_native_grpc_over_tls_through_envoy(https_gateway, certificate):
    key = https_gateway.create_key("tls-grpc")
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate.ca.read_bytes())
    with grpc.secure_channel(https_gateway.http_target, credentials) as channel:
        reply = chat_pb2_grpc.ChatServiceStub(channel).ListModels(
            chat_pb2.ListModelsRequest(),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=RPC_TIMEOUT,
        )
    assert reply.data[0].id == "gpt-4o"


def test_tls_on_the_direct_grpc_port(make_gateway, certificate):
    gw = make_gateway(
        extra_env={
            "GATEWAY_GRPC_TLS_CERT": str(certificate.cert),
            "GATEWAY_GRPC_TLS_KEY": str(certificate.key),
        }
    ).start()
    key = gw.create_key("grpc-tls")
    metadata = (("authorization", f"Bearer {key}"),)
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate.ca.read_bytes())
    with grpc.secure_channel(gw.grpc_target, credentials) as channel:
        reply = chat_pb2_grpc.ChatServiceStub(channel).ListModels(
            chat_pb2.ListModelsRequest(), metadata=metadata, timeout=RPC_TIMEOUT
        )
    assert reply.data
    with grpc.insecure_channel(gw.grpc_target) as channel, pytest.raises(grpc.RpcError):
        chat_pb2_grpc.ChatServiceStub(channel).ListModels(
            chat_pb2.ListModelsRequest(), metadata=metadata, timeout=RPC_TIMEOUT
        )
    # Envoy, beside the backend, still reaches it: REST works as before.
    response = httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_a_certificate_without_its_key_is_refused_at_start(tmp_path, certificate):
    result = subprocess.run(
        [*CLI, "serve", "--tls-cert", str(certificate.cert), "--db", str(tmp_path / "k.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "tls_cert and tls_key go together" in result.stderr
