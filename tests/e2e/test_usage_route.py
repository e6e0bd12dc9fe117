"""The admin API's usage routes against a real `typegpt-gateway serve`, through the real Envoy as
REST and on the gRPC port: GET /v1/admin/usage (KeyService.GetUsage), the whole gateway's
totals from the usage ledger, and the cost in GET /v1/admin/keys/{name}/usage.

Ledger rows are written into the gateway's own store (as its ledger writes them) on days long
past, which no other test's requests reach, under names of their own."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
from gateway_process import ADMIN_KEY, Gateway
from google.protobuf import json_format
from openai_shape import assert_error, chat_body

from typegpt.gateway.v1 import keys_pb2, keys_pb2_grpc
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.keystore.store import UsageRow

USAGE = "/v1/admin/usage"
RPC_TIMEOUT = 10.0
FIRST = dt.date(2011, 3, 1)
SECOND = FIRST + dt.timedelta(days=1)
DAYS = {"since": FIRST.isoformat(), "until": SECOND.isoformat()}


@pytest.fixture(scope="module")
def ledger(gateway: Gateway) -> tuple[str, str]:
    """Two key names with usage on FIRST and SECOND only; cost in micro-dollars."""
    a, b = (f"{prefix}-{uuid.uuid4().hex[:8]}" for prefix in ("usage-a", "usage-b"))
    store = KeyStore(gateway.db)
    try:
        store.add_usage(
            [
                (a, UsageRow(FIRST, "gpt-4o", 2, 100, 50, 0, 1_250_000, 0, 0)),
                (a, UsageRow(FIRST, "o3", 1, 10, 5, 1, 0, 1, 0)),
                (b, UsageRow(FIRST, "gpt-4o", 3, 300, 150, 0, 2_000_001, 0, 1)),
                (b, UsageRow(SECOND, "gpt-4o", 4, 400, 200, 2, 3, 0, 0)),
                # Outside the days asked for.
                (a, UsageRow(SECOND + dt.timedelta(days=1), "gpt-4o", 9, 9, 9, 9, 9, 9, 9)),
            ]
        )
    finally:
        store.close()
    return a, b


@pytest.fixture
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as http:
        yield http


def totals(
    requests: int,
    prompt: int,
    completion: int,
    errors: int,
    cost_usd: float,
    unpriced: int,
    estimated: int,
    **group: str,
) -> dict[str, object]:
    return {
        **group,
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "errors": errors,
        "cost_usd": cost_usd,
        "unpriced_requests": unpriced,
        "estimated_requests": estimated,
    }


def test_totals_per_day_by_default_with_cost_in_dollars(admin, ledger):
    response = admin.get(USAGE, params=DAYS)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "object": "list",
        "group_by": ["day"],
        "data": [
            totals(6, 410, 205, 1, 3.250001, 1, 1, day="2011-03-01"),
            totals(4, 400, 200, 2, 0.000003, 0, 0, day="2011-03-02"),
        ],
    }


def test_totals_per_key_and_model_are_ordered_by_key_then_model(admin, ledger):
    a, b = ledger
    body = admin.get(USAGE, params={**DAYS, "group_by": "model,key"}).json()
    assert body["group_by"] == ["model", "key"]
    assert body["data"] == [
        totals(2, 100, 50, 0, 1.25, 0, 0, key=a, model="gpt-4o"),
        totals(1, 10, 5, 1, 0, 1, 0, key=a, model="o3"),
        totals(7, 700, 350, 2, 2.000004, 0, 1, key=b, model="gpt-4o"),
    ]


def test_one_key_per_day_and_model(admin, ledger):
    _, b = ledger
    body = admin.get(USAGE, params={**DAYS, "group_by": "day,model", "key": b}).json()
    assert body["data"] == [
        totals(3, 300, 150, 0, 2.000001, 0, 1, day="2011-03-01", model="gpt-4o"),
        totals(4, 400, 200, 2, 0.000003, 0, 0, day="2011-03-02", model="gpt-4o"),
    ]
    empty = admin.get(USAGE, params={"key": f"nobody-{uuid.uuid4().hex[:8]}"})
    assert empty.status_code == 200 and empty.json()["data"] == []


def test_grpc_answers_what_rest_does(gateway, admin, ledger):
    params = {**DAYS, "group_by": "key,day"}
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        answer = keys_pb2_grpc.KeyServiceStub(channel).GetUsage(
            keys_pb2.GetUsageRequest(**params),
            metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
            timeout=RPC_TIMEOUT,
        )
    assert list(answer.group_by) == ["key", "day"]
    assert [(total.day, total.key, total.HasField("model")) for total in answer.data] == [
        ("2011-03-01", ledger[0], False),
        ("2011-03-01", ledger[1], False),
        ("2011-03-02", ledger[1], False),
    ]
    rest = admin.get(USAGE, params=params).json()
    as_json = json_format.MessageToDict(answer, preserving_proto_field_name=True)
    assert as_json == rest


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "user"}, "group_by"),
        ({"group_by": "day,day"}, "group_by"),
        ({"group_by": "day,"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2011-02-30"}, "until"),
        ({"since": "2011-03-02", "until": "2011-03-01"}, "until"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(admin, params, param):
    error = assert_error(admin.get(USAGE, params=params), 400, "invalid_request_error")
    assert error["param"] == param


def test_grpc_bad_parameters_are_invalid_argument_naming_the_parameter(gateway):
    with (
        grpc.insecure_channel(gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        keys_pb2_grpc.KeyServiceStub(channel).GetUsage(
            keys_pb2.GetUsageRequest(group_by="day,user"),
            metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
            timeout=RPC_TIMEOUT,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = json.loads(dict(refused.value.trailing_metadata())["x-openai-error"])["error"]
    assert (error["code"], error["param"]) == (400, "group_by")


def test_only_the_admin_key_may_read_it(gateway, api_key):
    assert_error(httpx.get(f"{gateway.url}{USAGE}"), 401, "authentication_error")
    client = {"authorization": f"Bearer {api_key}"}
    assert_error(httpx.get(f"{gateway.url}{USAGE}", headers=client), 403, "permission_error")
    with (
        grpc.insecure_channel(gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        keys_pb2_grpc.KeyServiceStub(channel).GetUsage(
            keys_pb2.GetUsageRequest(),
            metadata=(("authorization", f"Bearer {api_key}"),),
            timeout=RPC_TIMEOUT,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    trailers = dict(refused.value.trailing_metadata())
    assert json.loads(trailers["x-openai-error"])["error"]["code"] == 403


def test_a_request_through_the_gateway_shows_in_todays_totals(gateway, admin):
    name = f"usage-live-{uuid.uuid4().hex[:8]}"
    key = admin.post("/v1/admin/keys", json={"name": name}).json()["key"]
    gateway.wait_for_key(key)
    chat = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=chat_body(),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert chat.status_code == 200, chat.text
    gateway.wait_for_ledger({name: 1})
    # Not per day: a request just before midnight UTC is counted on the day before.
    body = admin.get(USAGE, params={"key": name, "group_by": "key,model"}).json()
    usage = chat.json()["usage"]
    assert [
        (row["key"], row["requests"], row["prompt_tokens"], row["completion_tokens"])
        for row in body["data"]
    ] == [(name, 1, usage["prompt_tokens"], usage["completion_tokens"])]


def test_key_usage_shows_cost_in_dollars_unpriced_and_estimated_requests(admin, gateway):
    name = f"usage-cost-{uuid.uuid4().hex[:8]}"
    assert admin.post("/v1/admin/keys", json={"name": name}).status_code == 200
    store = KeyStore(gateway.db)
    try:
        store.add_usage(
            [
                (name, UsageRow(FIRST, "gpt-4o", 2, 100, 50, 0, 1_500_000, 0, 1)),
                (name, UsageRow(FIRST, "o3", 1, 10, 5, 1, 0, 1, 0)),
            ]
        )
    finally:
        store.close()
    response = admin.get(f"/v1/admin/keys/{name}/usage", params={"since": FIRST.isoformat()})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [
        totals(2, 100, 50, 0, 1.5, 0, 1, day="2011-03-01", model="gpt-4o"),
        totals(1, 10, 5, 1, 0, 1, 0, day="2011-03-01", model="o3"),
    ]


def test_key_records_show_the_budget_periods_use_and_the_last_day_used(gateway, admin):
    today = dt.datetime.now(dt.UTC).date()
    month = today.replace(day=1)
    daily, monthly = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("daily", "monthly"))
    created = admin.post(
        "/v1/admin/keys", json={"name": daily, "budget_tokens": 10**9, "budget_period": "day"}
    ).json()
    # Nothing used yet: 0, and no last day.
    assert (created["tokens_used"], created["spent_usd"]) == (0, 0)
    assert "last_used_day" not in created
    admin.post("/v1/admin/keys", json={"name": monthly})
    store = KeyStore(gateway.db)
    try:
        for name in (daily, monthly):
            store.add_usage(
                [
                    (name, UsageRow(today, "gpt-4o", 2, 10, 20, 0, 1_500_000)),
                    (name, UsageRow(today, "o3", 1, 1, 2, 0, 0, 1)),  # unpriced: adds no cost
                    (name, UsageRow(month, "gpt-4o", 1, 100, 200, 0, 2_000_000)),
                    (name, UsageRow(month - dt.timedelta(days=40), "o3", 1, 10**6, 0, 0, 10**9)),
                ]
            )
    finally:
        store.close()
    day_use = (33, 1.5) if month != today else (333, 3.5)
    month_use = (333, 3.5)

    def use(record: dict) -> tuple[object, ...]:
        return record["tokens_used"], record["spent_usd"], record["last_used_day"]

    got = admin.get(f"/v1/admin/keys/{daily}").json()
    listed = {record["name"]: record for record in admin.get("/v1/admin/keys").json()["data"]}
    updated = admin.patch(f"/v1/admin/keys/{monthly}", json={"rpm": 5}).json()
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        over_grpc = keys_pb2_grpc.KeyServiceStub(channel).GetKey(
            keys_pb2.GetKeyRequest(name=monthly),
            metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
            timeout=RPC_TIMEOUT,
        )
    revoked = admin.delete(f"/v1/admin/keys/{daily}").json()
    # A new key under a used name goes on with the name's ledger, as its budget does.
    again = admin.post("/v1/admin/keys", json={"name": daily}).json()
    if dt.datetime.now(dt.UTC).date() != today:
        pytest.skip("the UTC day changed during the test")
    last = today.isoformat()
    assert use(got) == use(listed[daily]) == use(revoked) == (*day_use, last)
    assert use(listed[monthly]) == use(updated) == (*month_use, last)
    assert use(again) == (*month_use, last)  # no budget period: the month
    assert (over_grpc.tokens_used, over_grpc.spent_usd, over_grpc.last_used_day) == (
        *month_use,
        last,
    )
