"""Admin authorization, in process: every refusal is a fresh error, no module of the gateway
keeps an exception instance that it could raise twice, and wrong admin keys cost no I/O."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, TracebackType

import pytest
from counted_store import CountedReads

import typegpt_gateway
from typegpt_gateway.api.admin_auth import authorize_admin
from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.cache import KeyCache
from typegpt_gateway.keystore.sqlite import KeyStore

CALLS = 200
ADMIN_KEY = "admin-key-for-unit-tests"
WRONG_TOKENS = 10_000


def traceback_depth(traceback: TracebackType | None) -> int:
    depth = 0
    while traceback is not None:
        depth += 1
        traceback = traceback.tb_next
    return depth


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountedReads]:
    store = CountedReads(KeyStore(tmp_path / "keys.db"))
    try:
        yield store
    finally:
        store.store.close()


@pytest.fixture
def keys(store: CountedReads) -> KeyCache:
    return KeyCache(store, interval=60.0)  # type: ignore[arg-type]


async def refusal(authorization: str | None, admin_key: str | None, keys: KeyCache) -> GatewayError:
    with pytest.raises(GatewayError) as excinfo:
        await authorize_admin(authorization, admin_key, keys)
    return excinfo.value


def test_admin_api_off_raises_a_fresh_error_each_time(keys: KeyCache) -> None:
    # A shared instance keeps every raise's frames on its __traceback__: unauthenticated
    # calls would grow the process's memory without bound.
    async def scenario() -> tuple[list[GatewayError], list[int]]:
        errors, depths = [], []
        for _ in range(CALLS):
            errors.append(await refusal("Bearer whatever", None, keys))
            depths.append(traceback_depth(errors[-1].__traceback__))
        return errors, depths

    errors, depths = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert depths == [depths[0]] * CALLS
    assert len({id(error) for error in errors}) == CALLS
    assert all(error.status == 403 and "GATEWAY_ADMIN_KEY" in error.message for error in errors)


def test_wrong_admin_keys_cost_a_bounded_number_of_store_reads(
    store: CountedReads, keys: KeyCache
) -> None:
    _, client_key = store.create("client")
    store.reads = 0

    async def scenario() -> list[GatewayError]:
        wrong = [await refusal(f"Bearer wrong-{n}", ADMIN_KEY, keys) for n in range(WRONG_TOKENS)]
        # A client key is still told apart from garbage.
        wrong.append(await refusal(f"Bearer {client_key}", ADMIN_KEY, keys))
        return wrong

    started = time.monotonic()
    errors = asyncio.run(asyncio.wait_for(scenario(), 120))
    elapsed = time.monotonic() - started
    assert {(error.status, error.type) for error in errors[:-1]} == {(403, "authentication_error")}
    assert (errors[-1].status, errors[-1].type) == (403, "permission_error")
    assert store.reads <= 2 + elapsed / KeyCache.MISS_CHECK_SPACING, (store.reads, elapsed)


def gateway_modules() -> Iterator[ModuleType]:
    yield typegpt_gateway
    for info in pkgutil.walk_packages(typegpt_gateway.__path__, f"{typegpt_gateway.__name__}."):
        if not info.name.endswith(".__main__"):  # runs the CLI when imported
            yield importlib.import_module(info.name)


def shared_exceptions(module: ModuleType) -> Iterator[str]:
    """Exception instances a module holds at import: as its names, in its containers, or as
    attributes of its classes. Any of them, raised, would be raised again and again."""
    places: list[tuple[str, object]] = list(vars(module).items())
    for name, value in list(places):
        if isinstance(value, type) and value.__module__ == module.__name__:
            places += [(f"{name}.{attr}", item) for attr, item in vars(value).items()]
        elif isinstance(value, dict):
            places += [(f"{name}[{key!r}]", item) for key, item in value.items()]
        elif isinstance(value, list | tuple | set | frozenset):
            places += [(f"{name}[]", item) for item in value]
    for name, value in places:
        if isinstance(value, BaseException):
            yield f"{module.__name__}.{name}"


def test_no_module_holds_an_exception_instance() -> None:
    modules = list(gateway_modules())
    assert len(modules) > 20  # the scan did find the package
    assert [place for module in modules for place in shared_exceptions(module)] == []
