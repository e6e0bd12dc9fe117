"""KeyService, the admin API over gRPC, which Envoy also serves as REST under /v1/admin/keys
and /v1/admin/usage.

Each RPC: admin auth → the key admin core, in a worker thread since SQLite blocks → the
record as an ApiKey message. After a change the server's key cache is reloaded at once, so a
new key works, and a revoked one is refused, from the next request on; once a change is
committed it is answered, even if that reload fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from typegpt.gateway.v1 import keys_pb2, keys_pb2_grpc

from ..keystore.admin import ADMIN, LIMIT_PARAMS, KeyAdmin, parse_day
from ..keystore.cache import KeyCache
from ..keystore.key_limits import COUNT_LIMITS, micro_to_usd
from ..keystore.records import KeyRecord, status
from ..keystore.store import KeyActivity, PeriodUse, UsageGroup, UsageRow, UsageTotal
from ..limits.rules import period_bounds
from ..ops import observe
from ..redaction import register_secret
from .admin_auth import authorize_admin
from .rpc import abort, as_gateway_error, authorization_of

T = TypeVar("T")


def dollars(micro_usd: int) -> float:
    """The API speaks dollars; the ledger keeps exact micro-dollars."""
    return micro_usd / 1_000_000


def period_starts(now: float) -> dict[str, dt.date]:
    """The first day of the current budget day and month, UTC: what an ApiKey's use counts
    from, by its budget_period."""
    return {"day": period_bounds(now, "day")[0], "month": period_bounds(now, "month")[0]}


def api_key_message(
    record: KeyRecord, now: float, activity: KeyActivity, key: str | None = None
) -> keys_pb2.ApiKey:
    """The record, with its name's use of the current budget period (the month when it has
    no period) and last day from `activity` (KeyStore.key_activity over period_starts)."""
    use = activity.used.get(record.budget_period or "month", PeriodUse())
    message = keys_pb2.ApiKey(
        name=record.name,
        prefix=record.prefix,
        status=status(record, now),
        created_at=int(record.created_at),
        tokens_used=use.tokens,
        spent_usd=dollars(use.cost_micro_usd),
    )
    if activity.last_day is not None:
        message.last_used_day = activity.last_day.isoformat()
    if record.models is None:
        message.models.null_value = struct_pb2.NULL_VALUE
    else:
        message.models.list_value.extend(record.models)
    for field in (*COUNT_LIMITS, "budget_period"):
        value = getattr(record, field)
        if value is not None:
            setattr(message, field, value)
    if record.budget_usd_micro is not None:
        message.budget_usd = micro_to_usd(record.budget_usd_micro)
    if record.expires_at is not None:
        message.expires_at = int(record.expires_at)
    if record.revoked_at is not None:
        message.revoked_at = int(record.revoked_at)
    if key is not None:
        message.key = key
    return message


def usage_message(row: UsageRow) -> keys_pb2.KeyUsage:
    return keys_pb2.KeyUsage(
        day=row.day.isoformat(),
        model=row.model,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        errors=row.errors,
        cost_usd=dollars(row.cost_micro_usd),
        unpriced_requests=row.unpriced_requests,
        estimated_requests=row.estimated_requests,
    )


def usage_total_message(total: UsageTotal) -> keys_pb2.UsageTotal:
    message = keys_pb2.UsageTotal(
        requests=total.requests,
        prompt_tokens=total.prompt_tokens,
        completion_tokens=total.completion_tokens,
        errors=total.errors,
        cost_usd=dollars(total.cost_micro_usd),
        unpriced_requests=total.unpriced_requests,
        estimated_requests=total.estimated_requests,
    )
    # Only what the totals are per is present.
    if total.day is not None:
        message.day = total.day.isoformat()
    if total.key is not None:
        message.key = total.key
    if total.model is not None:
        message.model = total.model
    return message


def create_limits(request: keys_pb2.CreateKeyRequest) -> dict[str, object]:
    """The limits a CreateKeyRequest sets; absent and null alike mean no limit."""
    limits: dict[str, object] = {}
    if request.models:
        limits["models"] = list(request.models)
    for field in (*COUNT_LIMITS, "budget_period", "budget_usd"):
        if request.HasField(field):
            limits[field] = getattr(request, field)
    if request.HasField("expires_in"):
        limits["expires_in"] = json_format.MessageToDict(request.expires_in)
    return {name: value for name, value in limits.items() if value is not None}


def update_limits(request: keys_pb2.UpdateKeyRequest) -> dict[str, object]:
    """The limits an UpdateKeyRequest changes: present fields only, None removing a limit."""
    return {
        field: json_format.MessageToDict(getattr(request, field))
        for field in LIMIT_PARAMS
        if request.HasField(field)
    }


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, admin: KeyAdmin, admin_key: str | None, keys: KeyCache) -> None:
        self._admin = admin
        self._admin_key = admin_key
        self._keys = keys
        register_secret(admin_key)

    async def _run(
        self, context: observe.Context, operation: Callable[[], T], *, writes: bool
    ) -> T:
        """Authorizes the caller, then runs `operation` off the event loop; errors abort."""
        try:
            await authorize_admin(authorization_of(context), self._admin_key, self._keys)
            observe.current().key = ADMIN
            result = await asyncio.to_thread(operation)
        except Exception as exc:
            await abort(context, as_gateway_error(exc))
            raise AssertionError("unreachable: abort raises") from exc
        if writes:
            # Committed, so the caller gets the result whatever the reload does: a new key's
            # secret exists only in this answer. A reload that fails is logged, and the
            # cache catches up on its next check.
            await self._keys.refresh()
        return result

    def _activity(self, now: float, name: str) -> KeyActivity:
        """The ledger's activity of one key name (blocking: called in `_run`'s thread)."""
        return self._admin.activity(period_starts(now), name).get(name, KeyActivity())

    @observe.rpc("KeyService/CreateKey")
    async def CreateKey(
        self,
        request: keys_pb2.CreateKeyRequest,
        context: grpc.aio.ServicerContext[keys_pb2.CreateKeyRequest, keys_pb2.ApiKey],
    ) -> keys_pb2.ApiKey:
        now = time.time()

        def create() -> tuple[tuple[KeyRecord, str], KeyActivity]:
            # The name's use is read first: once the key is made, its answer must not fail.
            activity = self._activity(now, request.name)
            return self._admin.create(request.name, create_limits(request)), activity

        (record, key), activity = await self._run(context, create, writes=True)
        return api_key_message(record, now, activity, key)

    @observe.rpc("KeyService/ListKeys")
    async def ListKeys(
        self,
        request: keys_pb2.ListKeysRequest,
        context: grpc.aio.ServicerContext[keys_pb2.ListKeysRequest, keys_pb2.ListKeysResponse],
    ) -> keys_pb2.ListKeysResponse:
        now = time.time()

        def list_keys() -> tuple[list[KeyRecord], dict[str, KeyActivity]]:
            return self._admin.list(), self._admin.activity(period_starts(now))

        records, activity = await self._run(context, list_keys, writes=False)
        return keys_pb2.ListKeysResponse(
            object="list",
            data=[
                api_key_message(record, now, activity.get(record.name, KeyActivity()))
                for record in records
            ],
        )

    @observe.rpc("KeyService/GetKey")
    async def GetKey(
        self,
        request: keys_pb2.GetKeyRequest,
        context: grpc.aio.ServicerContext[keys_pb2.GetKeyRequest, keys_pb2.ApiKey],
    ) -> keys_pb2.ApiKey:
        now = time.time()

        def get() -> tuple[KeyRecord, KeyActivity]:
            return self._admin.get(request.name), self._activity(now, request.name)

        record, activity = await self._run(context, get, writes=False)
        return api_key_message(record, now, activity)

    @observe.rpc("KeyService/UpdateKey")
    async def UpdateKey(
        self,
        request: keys_pb2.UpdateKeyRequest,
        context: grpc.aio.ServicerContext[keys_pb2.UpdateKeyRequest, keys_pb2.ApiKey],
    ) -> keys_pb2.ApiKey:
        now = time.time()

        def update() -> tuple[KeyRecord, KeyActivity]:
            activity = self._activity(now, request.name)  # before the write, as in CreateKey
            return self._admin.update(request.name, update_limits(request)), activity

        record, activity = await self._run(context, update, writes=True)
        return api_key_message(record, now, activity)

    @observe.rpc("KeyService/RevokeKey")
    async def RevokeKey(
        self,
        request: keys_pb2.RevokeKeyRequest,
        context: grpc.aio.ServicerContext[keys_pb2.RevokeKeyRequest, keys_pb2.ApiKey],
    ) -> keys_pb2.ApiKey:
        now = time.time()

        def revoke() -> tuple[KeyRecord, KeyActivity]:
            activity = self._activity(now, request.name)  # before the write, as in CreateKey
            return self._admin.revoke(request.name), activity

        record, activity = await self._run(context, revoke, writes=True)
        return api_key_message(record, now, activity)

    @observe.rpc("KeyService/GetKeyUsage")
    async def GetKeyUsage(
        self,
        request: keys_pb2.GetKeyUsageRequest,
        context: grpc.aio.ServicerContext[
            keys_pb2.GetKeyUsageRequest, keys_pb2.GetKeyUsageResponse
        ],
    ) -> keys_pb2.GetKeyUsageResponse:
        def usage() -> list[UsageRow]:
            since = parse_day(request.since) if request.since else None
            return self._admin.usage(request.name, since)

        rows = await self._run(context, usage, writes=False)
        return keys_pb2.GetKeyUsageResponse(
            object="list", name=request.name, data=[usage_message(row) for row in rows]
        )

    @observe.rpc("KeyService/GetUsage")
    async def GetUsage(
        self,
        request: keys_pb2.GetUsageRequest,
        context: grpc.aio.ServicerContext[keys_pb2.GetUsageRequest, keys_pb2.GetUsageResponse],
    ) -> keys_pb2.GetUsageResponse:
        def totals() -> tuple[tuple[UsageGroup, ...], list[UsageTotal]]:
            return self._admin.usage_totals(
                request.group_by, request.since, request.until, request.key
            )

        groups, rows = await self._run(context, totals, writes=False)
        return keys_pb2.GetUsageResponse(
            object="list", group_by=groups, data=[usage_total_message(row) for row in rows]
        )
