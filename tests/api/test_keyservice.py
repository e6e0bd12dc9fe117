"""KeyService in process, on a grpc.aio server bound to 127.0.0.1:0 over a real SQLite store
(see test_servicer.py for why not grpc_testing): what an admin write answers when the key
cache cannot reload after the write committed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from counted_store import CountedReads

from typegpt.gateway.v1 import keys_pb2, keys_pb2_grpc
from typegpt_gateway.api.key_service import KeyServicer
from typegpt_gateway.keystore.admin import KeyAdmin
from typegpt_gateway.keystore.cache import KeyCache
from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.keystore.store import UsageRow

ADMIN_KEY = "admin-key-for-keyservice-tests"
ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)
TIMEOUT = 20.0


class BrokenReads(CountedReads):
    """A store whose reads for the key cache fail while `broken` is set, as a database that
    drops the connection right after a commit would."""

    broken = False

    def data_version(self) -> int:
        if self.broken:
            raise OSError("the key store went away")
        return super().data_version()

    def by_hash(self) -> dict[bytes, KeyRecord]:
        if self.broken:
            raise OSError("the key store went away")
        return super().by_hash()


@contextlib.asynccontextmanager
async def key_service(
    store: KeyStore, reads: BrokenReads
) -> AsyncIterator[tuple[keys_pb2_grpc.KeyServiceStub, KeyCache]]:
    keys = KeyCache(reads, interval=60.0)  # type: ignore[arg-type]
    server = grpc.aio.server()
    keys_pb2_grpc.add_KeyServiceServicer_to_server(
        KeyServicer(KeyAdmin(store, ("gpt-4o",)), ADMIN_KEY, keys), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield keys_pb2_grpc.KeyServiceStub(channel), keys
    finally:
        await server.stop(0)


def test_a_committed_key_is_returned_even_if_the_cache_cannot_reload(
    tmp_path: Path, caplog
) -> None:
    store = KeyStore(tmp_path / "keys.db")
    reads = BrokenReads(store)

    async def scenario() -> None:
        async with key_service(store, reads) as (stub, keys):
            reads.broken = True
            created = await stub.CreateKey(
                keys_pb2.CreateKeyRequest(name="committed"), metadata=ADMIN, timeout=TIMEOUT
            )
            assert created.key.startswith("sk-") and created.name == "committed"
            # The write did commit: the name is taken.
            with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                await stub.CreateKey(
                    keys_pb2.CreateKeyRequest(name="committed"), metadata=ADMIN, timeout=TIMEOUT
                )
            assert excinfo.value.code() == grpc.StatusCode.ABORTED  # 409
            # Once the store answers again, the cache catches up and the key works.
            reads.broken = False
            record = await keys.authenticate(f"Bearer {created.key}")
            assert record.name == "committed"

    try:
        asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    finally:
        store.close()
    assert "could not re-read the key store" in caplog.text


def test_list_keys_reads_every_keys_use_in_one_query(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    names = [f"key-{i}" for i in range(20)]
    for name in names:
        store.create(name)
    day = dt.datetime.now(dt.UTC).date()
    store.add_usage(
        [(name, UsageRow(day, "gpt-4o", 1, i, i, 0, i)) for i, name in enumerate(names)]
    )
    statements: list[str] = []

    async def scenario() -> keys_pb2.ListKeysResponse:
        async with key_service(store, BrokenReads(store)) as (stub, _):
            store._db.set_trace_callback(statements.append)
            return await stub.ListKeys(keys_pb2.ListKeysRequest(), metadata=ADMIN, timeout=TIMEOUT)

    try:
        listed = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    finally:
        store._db.set_trace_callback(None)
        store.close()
    assert [(key.name, key.tokens_used) for key in listed.data] == [
        (name, 2 * i) for i, name in enumerate(names)
    ]
    # The records, then every name's use at once: not a query per key.
    reads = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2, reads
    assert sum("FROM usage" in sql for sql in reads) == 1
