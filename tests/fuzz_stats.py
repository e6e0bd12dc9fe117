"""Counts of fuzzing cases sent, printed at the end of the run by conftest.py."""

from __future__ import annotations

import time
from collections import Counter

CASES: Counter[str] = Counter()
STATUSES: dict[str, Counter[int]] = {}
_started: list[float] = []
_last: list[float] = [0.0]


def started() -> None:
    if not _started:
        _started.append(time.monotonic())


def count(label: str, status: int) -> None:
    CASES[label] += 1
    _last[0] = time.monotonic()
    STATUSES.setdefault(label, Counter())[status] += 1


def elapsed() -> float:
    """Seconds since the first fuzzing case."""
    return time.monotonic() - _started[0] if _started else 0.0


def summary() -> str | None:
    if not CASES:
        return None
    spent = _last[0] - _started[0] if _started else 0.0
    lines = [f"schemathesis: {sum(CASES.values())} cases in {spent:.0f} s"]
    for label, count in sorted(CASES.items()):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(STATUSES[label].items()))
        lines.append(f"  {count:5d}  {label}  ({statuses})")
    return "\n".join(lines)
