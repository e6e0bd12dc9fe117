"""How long the gateway waits for an upstream, and the 504 it gives when that runs out. Pure.

Four limits, each a setting: connecting; the first byte of an answer (headers, then the first
bytes of the body: a reasoning model may think for minutes before either); the gap between
two chunks once the answer flows; and the whole exchange, retries included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GatewayError


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float
    total: float


def timeout_error(detail: str = "") -> GatewayError:
    suffix = f" ({detail})" if detail else ""
    return GatewayError(504, f"The upstream API did not answer in time{suffix}.", "timeout_error")


@dataclass(frozen=True, slots=True)
class Due:
    """When the next thing from the upstream is due, and why: the 504 is only made if it is
    late, which is rare, rather than on every read."""

    at: float
    detail: str

    def error(self) -> GatewayError:
        return timeout_error(self.detail)


class Deadlines:
    """The limits of one request, on the event loop's monotonic clock."""

    def __init__(self, timeouts: Timeouts, now: float) -> None:
        self.timeouts = timeouts
        self.end = now + timeouts.total
        self._attempt_started = now
        self._first_byte_seen = False

    def attempt(self, now: float) -> None:
        """A new upstream attempt starts: its first byte has its own full allowance."""
        self._attempt_started = now
        self._first_byte_seen = False

    def got_bytes(self) -> None:
        self._first_byte_seen = True

    def first_byte(self) -> Due:
        """When the current attempt's first byte is due."""
        due = self._attempt_started + self.timeouts.first_byte
        if due <= self.end:
            return Due(due, f"no answer within {self.timeouts.first_byte:g} s")
        return self._total()

    def next_read(self, now: float) -> Due:
        """When the next chunk of the answer is due (read starting `now`)."""
        if not self._first_byte_seen:
            return self.first_byte()
        due = now + self.timeouts.idle
        if due <= self.end:
            return Due(due, f"silent for {self.timeouts.idle:g} s mid-answer")
        return self._total()

    def _total(self) -> Due:
        return Due(self.end, f"not finished within {self.timeouts.total:g} s")
