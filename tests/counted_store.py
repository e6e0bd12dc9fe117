"""A key store that counts the reads a KeyCache makes to refresh itself."""

from __future__ import annotations

from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.keystore.store import Store


class CountedReads:
    """Delegates to `store`, counting data_version and by_hash calls."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def data_version(self) -> int:
        self.reads += 1
        return self.store.data_version()

    def by_hash(self) -> dict[bytes, KeyRecord]:
        self.reads += 1
        return self.store.by_hash()
