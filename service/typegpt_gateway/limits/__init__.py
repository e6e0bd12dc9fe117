"""Per-key limits: pure rules (`rules`), the request path's `Limiter`, and its backends."""

from .limiter import UNLIMITED, Backend, Limiter, LimiterUnavailableError, Ticket
from .memory import InProcessBackend
from .rules import Decision, Limits, Snapshot, Spent

__all__ = [
    "UNLIMITED",
    "Backend",
    "Decision",
    "InProcessBackend",
    "Limiter",
    "LimiterUnavailableError",
    "Limits",
    "Snapshot",
    "Spent",
    "Ticket",
]
