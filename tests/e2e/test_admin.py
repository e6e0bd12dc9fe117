"""The admin API (KeyService): REST through the real Envoy, native gRPC on the direct port,
and the CLI on the same store, against a real `typegpt-gateway serve`."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from gateway_process import ADMIN_KEY, Gateway, cli
from google.protobuf import struct_pb2
from openai_shape import assert_error, chat_body
from slow_link import slow_link

from typegpt.gateway.v1 import keys_pb2, keys_pb2_grpc

KEYS = "/v1/admin/keys"
CHAT = "/v1/chat/completions"
RPC_TIMEOUT = 10.0
RECORD_FIELDS = {"name", "prefix", "status", "models", "created_at", "tokens_used", "spent_usd"}


@pytest.fixture
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as http:
        yield http


@pytest.fixture
def stub(gateway: Gateway) -> Iterator[keys_pb2_grpc.KeyServiceStub]:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        yield keys_pb2_grpc.KeyServiceStub(channel)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat_status(gateway: Gateway, key: str) -> int:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(
        f"{gateway.url}{CHAT}", json=chat_body(), headers=headers, timeout=30
    ).status_code


def admin_auth(key: str = ADMIN_KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def grpc_error(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as excinfo:
        call(*args, timeout=RPC_TIMEOUT, **kwargs)  # type: ignore[operator]
    return excinfo.value


# --- REST: the shapes scripts rely on --------------------------------------------------------


def test_create_returns_the_record_with_the_key_once_and_it_works_at_once(gateway, admin, upstream):
    name = unique("svc")
    response = admin.post(
        KEYS, json={"name": name, "models": ["gpt-4o", "o3"], "rpm": 60, "expires_in": "30d"}
    )
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["key"].startswith("sk-") and len(record["key"]) > 40
    assert record["prefix"] == record["key"][: len(record["prefix"])]
    assert record["name"] == name
    assert record["status"] == "active"
    assert record["models"] == ["gpt-4o", "o3"]
    assert record["rpm"] == 60
    assert isinstance(record["created_at"], int)
    assert record["expires_at"] - record["created_at"] == pytest.approx(30 * 86400, abs=2)
    # Limits not set are absent (no limit), not zero.
    assert not {"tpm", "max_concurrent", "budget_tokens", "budget_period", "revoked_at"} & set(
        record
    )

    # The gateway accepts the key within a second of its creation.
    deadline = time.monotonic() + 1.0
    while chat_status(gateway, record["key"]) != 200:
        assert time.monotonic() < deadline, "a key created by the admin API was not accepted in 1 s"
        time.sleep(0.05)

    # And it is never shown again.
    assert "key" not in admin.get(f"{KEYS}/{name}").json()
    assert all("key" not in item for item in admin.get(KEYS).json()["data"])


def test_create_with_only_a_name_has_every_model_and_no_limits(admin):
    record = admin.post(KEYS, json={"name": unique("plain")}).json()
    assert record["models"] is None
    assert set(record) == RECORD_FIELDS | {"key"}


def test_all_limits_round_trip_as_json_numbers(admin):
    body = {
        "name": unique("limits"),
        "rpm": 30,
        "tpm": 40000,
        "max_concurrent": 4,
        "budget_tokens": 5_000_000_000,
        "budget_period": "month",
        "expires_in": 3600,
    }
    response = admin.post(KEYS, json=body)
    assert response.status_code == 200, response.text
    # Whole numbers print as JSON numbers, never strings, even above 2^32.
    assert '"budget_tokens":5000000000' in response.text
    record = response.json()
    for field in ("rpm", "tpm", "max_concurrent", "budget_tokens", "budget_period"):
        assert record[field] == body[field]
    assert record["expires_at"] - record["created_at"] == pytest.approx(3600, abs=2)


def test_a_dollar_budget_is_set_changed_and_removed_in_dollars(admin):
    name = unique("dollars")
    response = admin.post(KEYS, json={"name": name, "budget_usd": 0.29})
    assert response.status_code == 200, response.text
    record = response.json()
    assert (record["budget_usd"], record["budget_period"]) == (0.29, "month")
    record = admin.patch(f"{KEYS}/{name}", json={"budget_usd": 25, "budget_period": "day"}).json()
    assert (record["budget_usd"], record["budget_period"]) == (25, "day")
    assert admin.get(f"{KEYS}/{name}").json() == record
    record = admin.patch(f"{KEYS}/{name}", json={"budget_usd": None}).json()
    assert "budget_usd" not in record
    for bad in (0, -1, 0.0000001, "lots"):
        refused = admin.patch(f"{KEYS}/{name}", json={"budget_usd": bad})
        assert assert_error(refused, 400, "invalid_request_error")["param"] == "budget_usd"


def test_list_shows_every_record_never_a_key(admin):
    names = [unique("listed"), unique("listed")]
    for name in names:
        admin.post(KEYS, json={"name": name})
    admin.delete(f"{KEYS}/{names[1]}")
    listing = admin.get(KEYS)
    assert listing.status_code == 200
    body = listing.json()
    assert body["object"] == "list"
    by_name = {item["name"]: item for item in body["data"]}
    assert by_name[names[0]]["status"] == "active"
    assert by_name[names[1]]["status"] == "revoked"
    assert "sk-" not in listing.text.replace('"prefix":"sk-', "")


def test_get_unknown_name_is_404(admin):
    error = assert_error(admin.get(f"{KEYS}/{unique('nobody')}"), 404, "invalid_request_error")
    assert error["param"] == "name"


def test_patch_sets_removes_and_keeps_limits(admin):
    name = unique("patched")
    admin.post(KEYS, json={"name": name, "rpm": 10, "models": ["gpt-4o"], "tpm": 500})
    response = admin.patch(f"{KEYS}/{name}", json={"rpm": 20, "models": None})
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["rpm"] == 20  # set
    assert record["models"] is None  # null removes the restriction
    assert record["tpm"] == 500  # left out: unchanged
    record = admin.patch(f"{KEYS}/{name}", json={"tpm": None, "models": ["o3"]}).json()
    assert "tpm" not in record and record["models"] == ["o3"] and record["rpm"] == 20
    assert admin.get(f"{KEYS}/{name}").json() == record


def test_patch_restricting_models_takes_effect_at_once(gateway, admin):
    name = unique("narrowed")
    key = admin.post(KEYS, json={"name": name}).json()["key"]
    assert chat_status(gateway, key) == 200
    admin.patch(f"{KEYS}/{name}", json={"models": ["o3"]})
    assert chat_status(gateway, key) == 403  # gpt-4o is no longer allowed


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": 0}, "rpm"),
        ({"rpm": 1.5}, "rpm"),
        ({"rpm": "many"}, "rpm"),
        ({"max_concurrent": -1}, "max_concurrent"),
        ({"budget_period": "year"}, "budget_period"),
        ({"models": []}, "models"),
        ({"models": ["gpt-does-not-exist"]}, "models"),
        ({"models": "gpt-4o"}, "models"),
        ({"expires_in": "soon"}, "expires_in"),
        ({"expires_in": -5}, "expires_in"),
    ],
)
def test_patch_rejects_bad_limits_naming_the_field(admin, body, param):
    name = unique("strict")
    admin.post(KEYS, json={"name": name, "rpm": 7})
    error = assert_error(admin.patch(f"{KEYS}/{name}", json=body), 400, "invalid_request_error")
    assert error["param"] == param
    assert admin.get(f"{KEYS}/{name}").json()["rpm"] == 7  # nothing changed


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "ok-name", "models": ["nope"]}, "models"),
        ({"name": "ok-name", "rpm": 0}, "rpm"),
        ({"name": "ok-name", "expires_in": "3x"}, "expires_in"),
    ],
)
def test_create_rejects_bad_input_naming_the_field(admin, body, param):
    error = assert_error(admin.post(KEYS, json=body), 400, "invalid_request_error")
    assert error["param"] == param


def test_create_with_a_live_name_is_409(admin):
    name = unique("twice")
    assert admin.post(KEYS, json={"name": name}).status_code == 200
    error = assert_error(admin.post(KEYS, json={"name": name}), 409)
    assert name in error["message"]


def test_malformed_json_is_an_openai_400(admin):
    response = admin.post(KEYS, content=b'{"name": ', headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request_error")


def test_delete_revokes_and_the_gateway_refuses_the_key_at_once(gateway, admin):
    name = unique("doomed")
    key = admin.post(KEYS, json={"name": name}).json()["key"]
    assert chat_status(gateway, key) == 200
    response = admin.delete(f"{KEYS}/{name}")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert isinstance(response.json()["revoked_at"], int)
    assert chat_status(gateway, key) == 403
    assert_error(admin.delete(f"{KEYS}/{name}"), 404)
    assert_error(admin.patch(f"{KEYS}/{name}", json={"rpm": 5}), 404)
    # The name is free again.
    assert admin.post(KEYS, json={"name": name}).status_code == 200


def test_usage_lists_days(admin):
    name = unique("usage")
    admin.post(KEYS, json={"name": name})
    response = admin.get(f"{KEYS}/{name}/usage", params={"since": "2025-01-01"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["name"] == name
    assert isinstance(body["data"], list)  # present even when empty
    assert_error(admin.get(f"{KEYS}/{name}/usage", params={"since": "yesterday"}), 400)
    assert_error(admin.get(f"{KEYS}/{unique('ghost')}/usage"), 404)


# --- who may use it --------------------------------------------------------------------------


def test_no_admin_key_is_401(gateway):
    assert_error(httpx.get(f"{gateway.url}{KEYS}"), 401, "authentication_error")


def test_a_client_key_on_an_admin_route_is_403(gateway, api_key):
    headers = {"authorization": f"Bearer {api_key}"}
    for method, path in (("GET", KEYS), ("POST", KEYS), ("DELETE", f"{KEYS}/test-client")):
        response = httpx.request(
            method, f"{gateway.url}{path}", headers=headers, json={"name": "x"}
        )
        error = assert_error(response, 403, "permission_error")
        assert "admin" in error["message"]
    # The client's key survived its attempt to revoke itself.
    assert chat_status(gateway, api_key) == 200


def test_a_wrong_admin_key_is_403(gateway):
    headers = {"authorization": f"Bearer {ADMIN_KEY}x"}
    assert_error(httpx.get(f"{gateway.url}{KEYS}", headers=headers), 403, "authentication_error")


def test_the_admin_key_is_not_a_client_key(gateway):
    assert chat_status(gateway, ADMIN_KEY) == 403


def test_without_an_admin_key_the_admin_api_is_off_and_says_so(make_gateway, api_key):
    gw = make_gateway(admin_key=None).start()
    for headers in ({}, {"authorization": f"Bearer {ADMIN_KEY}"}, {"authorization": "Bearer x"}):
        response = httpx.get(f"{gw.url}{KEYS}", headers=headers)
        error = assert_error(response, 403, "permission_error")
        assert "GATEWAY_ADMIN_KEY" in error["message"]
    with grpc.insecure_channel(gw.grpc_target) as channel:
        error = grpc_error(
            keys_pb2_grpc.KeyServiceStub(channel).ListKeys,
            keys_pb2.ListKeysRequest(),
            metadata=admin_auth(),
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "GATEWAY_ADMIN_KEY" in error.details()
    assert gw.wait_for_log("admin API off")


def test_an_empty_admin_key_counts_as_none(make_gateway):
    gw = make_gateway(admin_key="   ").start()
    response = httpx.get(f"{gw.url}{KEYS}", headers={"authorization": "Bearer x"})
    assert "GATEWAY_ADMIN_KEY" in assert_error(response, 403)["message"]


GARBAGE_REQUESTS = 2_000
FLOOD_CONNECTIONS = 200
FLOOD = Path(__file__).resolve().parents[1] / "garbage_flood.py"
# One way, between the gateway and its PostgreSQL: a key store 20 ms (a round trip) away,
# where each store read under the store's one lock is felt.
STORE_DELAY = 0.010


def timed_calls(gw: Gateway, client_key: str) -> tuple[float, float]:
    """How long an admin call and a good client's request take."""
    took = []
    for method, path, key, body in (
        ("GET", KEYS, ADMIN_KEY, None),
        ("POST", CHAT, client_key, chat_body()),
    ):
        started = time.monotonic()
        response = httpx.request(
            method,
            f"{gw.url}{path}",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=60,
        )
        took.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
    return took[0], took[1]


def test_a_flood_of_unknown_keys_delays_neither_admin_calls_nor_clients(
    make_gateway, postgres_server
):
    """2,000 requests with garbage keys, 200 at a time, from another process, with the key
    store a 20 ms round trip away. Each unknown key used to cost a store read under the
    store's one lock, and admin calls queued behind them (2 s and more each). Now each
    admin call and good request stays within 1 s plus ten times its quiet latency."""
    url = postgres_server.new_database()
    store_port = urllib.parse.urlsplit(url).port
    with slow_link(store_port, STORE_DELAY) as port:
        far_store = url.replace(f":{store_port}/", f":{port}/")
        gw = make_gateway(extra_env={"DATABASE_URL": far_store}).start()
        try:
            client_key = gw.wait_for_key(gw.create_key("good-client"))
            quiet = [timed_calls(gw, client_key) for _ in range(3)]
            flood = subprocess.Popen(
                [
                    sys.executable,
                    str(FLOOD),
                    f"{gw.url}{CHAT}",
                    str(GARBAGE_REQUESTS),
                    str(FLOOD_CONNECTIONS),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                during = []
                deadline = time.monotonic() + 120
                while flood.poll() is None and time.monotonic() < deadline:
                    during.append(timed_calls(gw, client_key))
                statuses, _ = flood.communicate(timeout=60)
            finally:
                flood.kill()
        finally:
            gw.stop()
    assert json.loads(statuses) == {"403": GARBAGE_REQUESTS}
    assert len(during) > 1, "the flood ended before calls could be timed during it"
    for name, index in (("admin", 0), ("client", 1)):
        quiet_best = min(times[index] for times in quiet)
        flood_worst = max(times[index] for times in during)
        assert flood_worst < 1.0 + 10 * quiet_best, (name, quiet_best, flood_worst)


# --- native gRPC -----------------------------------------------------------------------------


def test_grpc_create_update_revoke(gateway, stub):
    name = unique("grpc")
    created = stub.CreateKey(
        keys_pb2.CreateKeyRequest(name=name, models=["gpt-4o"], rpm=5),
        metadata=admin_auth(),
        timeout=RPC_TIMEOUT,
    )
    assert created.key.startswith("sk-") and created.rpm == 5
    assert [value.string_value for value in created.models.list_value.values] == ["gpt-4o"]
    assert chat_status(gateway, created.key) == 200

    update = keys_pb2.UpdateKeyRequest(name=name, rpm=struct_pb2.Value(number_value=9))
    update.models.null_value = struct_pb2.NULL_VALUE
    updated = stub.UpdateKey(update, metadata=admin_auth(), timeout=RPC_TIMEOUT)
    assert updated.rpm == 9 and updated.models.WhichOneof("kind") == "null_value"
    assert not updated.HasField("key")

    listed = stub.ListKeys(keys_pb2.ListKeysRequest(), metadata=admin_auth(), timeout=RPC_TIMEOUT)
    assert name in [record.name for record in listed.data]

    revoked = stub.RevokeKey(
        keys_pb2.RevokeKeyRequest(name=name), metadata=admin_auth(), timeout=RPC_TIMEOUT
    )
    assert revoked.status == "revoked"
    assert chat_status(gateway, created.key) == 403


def test_grpc_errors_have_status_codes_and_openai_metadata(stub, api_key):
    cases = [
        (stub.ListKeys, keys_pb2.ListKeysRequest(), (), grpc.StatusCode.UNAUTHENTICATED, 401),
        (
            stub.ListKeys,
            keys_pb2.ListKeysRequest(),
            admin_auth(api_key),
            grpc.StatusCode.PERMISSION_DENIED,
            403,
        ),
        (
            stub.GetKey,
            keys_pb2.GetKeyRequest(name=unique("none")),
            admin_auth(),
            grpc.StatusCode.NOT_FOUND,
            404,
        ),
        (
            stub.CreateKey,
            keys_pb2.CreateKeyRequest(name="bad name"),
            admin_auth(),
            grpc.StatusCode.INVALID_ARGUMENT,
            400,
        ),
    ]
    for call, request, metadata, code, status in cases:
        error = grpc_error(call, request, metadata=metadata)
        assert error.code() == code, (call, error.details())
        trailers = dict(error.trailing_metadata())
        assert trailers["x-http-status"] == str(status)
        assert json.loads(trailers["x-openai-error"])["error"]["code"] == status


# --- one store, two front ends ---------------------------------------------------------------


def test_cli_and_admin_api_share_the_store(gateway, admin):
    from_cli = unique("cli")
    key = gateway.create_key(from_cli, "--models", "gpt-4o")
    record = admin.get(f"{KEYS}/{from_cli}").json()
    assert record["models"] == ["gpt-4o"] and record["prefix"] == key[: len(record["prefix"])]

    from_api = unique("api")
    api_key = admin.post(KEYS, json={"name": from_api}).json()["key"]
    listing = cli(gateway.db, "keys", "list").stdout
    assert from_api in listing and api_key not in listing
    gateway.revoke_key(from_api)
    assert admin.get(f"{KEYS}/{from_api}").json()["status"] == "revoked"
    deadline = time.monotonic() + 2.0
    while chat_status(gateway, api_key) != 403:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_cli_applies_the_same_rules(gateway):
    result = cli(gateway.db, "keys", "create", "--name", "bad name", check=False)
    assert result.returncode != 0 and "--name" in result.stderr
    result = cli(
        gateway.db, "keys", "create", "--name", unique("m"), "--models", "nope", check=False
    )
    assert result.returncode != 0 and "catalog" in result.stderr


def test_cli_refuses_a_since_that_is_neither_a_date_nor_a_lookback(tmp_path):
    result = cli(tmp_path / "keys.db", "keys", "usage", "someone", "--since", "soon", check=False)
    assert result.returncode == 2, result.stderr
    assert "--since" in result.stderr and "lookback" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_usage_shows_cost_in_dollars_and_unknown_for_unpriced_models(tmp_path):
    from typegpt_gateway.keystore.sqlite import KeyStore
    from typegpt_gateway.keystore.store import UsageRow

    db = tmp_path / "keys.db"
    day = dt.date(2026, 5, 1)
    store = KeyStore(db)
    try:
        store.create("spender")
        store.add_usage(
            [
                ("spender", UsageRow(day, "gpt-4o", 2, 100, 50, 0, 3_250_000, 0, 1)),
                ("spender", UsageRow(day, "cheap", 1, 10, 5, 0, 15, 0, 0)),
                ("spender", UsageRow(day, "mystery", 3, 30, 15, 0, 0, 3, 0)),
                ("spender", UsageRow(day, "repriced", 4, 40, 20, 0, 7, 1, 0)),
            ]
        )
    finally:
        store.close()
    lines = cli(db, "keys", "usage", "spender").stdout.splitlines()
    assert lines[0].split() == [
        "DAY", "MODEL", "REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "ERRORS", "COST",
        "ESTIMATED",
    ]  # fmt: skip
    costs = {line.split()[1]: line.split(maxsplit=6)[6].rsplit(maxsplit=1) for line in lines[1:]}
    assert costs == {
        "cheap": ["$0.000015", "0"],
        "gpt-4o": ["$3.25", "1"],
        "mystery": ["unknown", "0"],  # not $0.00: its model has no price
        "repriced": ["$0.000007 + unknown (1 unpriced)", "0"],
    }
    rows = json.loads(cli(db, "keys", "usage", "spender", "--json").stdout)
    assert {row["model"]: row["cost_micro_usd"] for row in rows}["gpt-4o"] == 3_250_000
    assert {row["model"]: row["unpriced_requests"] for row in rows}["mystery"] == 3


def test_cli_backup_copies_the_live_store(gateway, admin, tmp_path):
    name = unique("backed-up")
    admin.post(KEYS, json={"name": name, "rpm": 3})
    copy = tmp_path / "backup.db"
    result = cli(gateway.db, "keys", "backup", str(copy))
    assert result.returncode == 0, result.stderr
    listing = cli(copy, "keys", "list").stdout
    assert name in listing
    again = cli(gateway.db, "keys", "backup", str(copy), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
