"""The server's in-memory view of the key store, refreshed when another process changes it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from ..errors import GatewayError
from .records import KeyRecord, authenticate
from .store import Store

logger = logging.getLogger(__name__)


class KeyCache:
    """The server's view of the store: an in-memory map from key hash to record, so that a
    request costs one dict lookup whatever the number of keys, refreshed in the background
    within `interval` seconds of any change made by another process (e.g. `keys revoke`).

    At most one check of the store runs at a time, whoever asks for it (a miss, the
    refresher, an admin write), and a failed check is logged, never raised: the keys loaded
    stay in use."""

    # An unknown (or revoked, or expired) key makes the cache check the store again, in case
    # the key was created or changed a moment ago by the CLI or another replica: the miss
    # waits for a check that begins after it, so such a key is accepted on its first use. But
    # within this many seconds of the end of the last check a miss made, a miss is refused at
    # once from the keys loaded, and misses that wait share one check. A flood of garbage keys
    # thus costs the store at most ~10 version reads a second (a full reload only when
    # something changed), next to the refresher's own, and delays a key created during the
    # flood by about 0.1 s; admin API writes reload at once.
    MISS_CHECK_SPACING = 0.1

    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._lock = threading.Lock()
        self._by_hash = store.by_hash()
        self._version = store.data_version()
        self._check: asyncio.Task[None] | None = None  # the one check that may be running
        self._checks_begun = 0
        self._last_miss_check_ended = -float("inf")  # time.monotonic()
        self._failing = False

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        try:
            return authenticate(authorization, self._by_hash, time.time())
        except GatewayError as error:
            if error.status != 403 or not await self._fresh_check(for_miss=True):
                raise
        return authenticate(authorization, self._by_hash, time.time())

    async def refresh(self) -> None:
        """Returns after a check that began after this call, so that it saw any write
        committed before it. Never raises."""
        await self._fresh_check(for_miss=False)

    async def _fresh_check(self, *, for_miss: bool) -> bool:
        """Waits for a check that begins after the call, unless (for a miss) a miss's check
        ended within the spacing. True when it waited for any check: the keys may have
        changed."""
        asked = self._checks_begun
        waited = False
        while True:
            if (
                for_miss
                and time.monotonic() - self._last_miss_check_ended < self.MISS_CHECK_SPACING
            ):
                return waited
            check = self._check
            if check is None or check.done():
                check = self._begin_check(for_miss)
            begun_after = self._checks_begun > asked
            # Shielded: a client that hangs up does not cancel the check others wait for.
            await asyncio.shield(check)
            waited = True
            if begun_after:
                return True

    def _begin_check(self, for_miss: bool) -> asyncio.Task[None]:
        self._checks_begun += 1
        self._check = asyncio.create_task(asyncio.to_thread(self._checked_refresh, for_miss))
        return self._check

    def _checked_refresh(self, for_miss: bool) -> None:
        try:
            self.refresh_if_changed()
        except Exception:
            # Once per outage, not once per check: misses and the refresher keep checking.
            if not self._failing:
                logger.exception("could not re-read the key store; keeping the keys loaded")
            self._failing = True
        else:
            if self._failing:
                logger.info("the key store can be read again")
            self._failing = False
        finally:
            if for_miss:
                self._last_miss_check_ended = time.monotonic()

    def refresh_if_changed(self) -> bool:
        with self._lock:
            version = self._store.data_version()
            if version == self._version:
                return False
            # Read the version first: a change landing during the read is caught next time.
            self._version = version
            self._by_hash = self._store.by_hash()
            return True

    async def run_refresher(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.refresh()
        finally:
            # Stopped at shutdown, after the last request: a check in a worker thread runs to
            # its end anyway, so wait for it rather than leave its task behind.
            if self._check is not None:
                await asyncio.wait([self._check])
