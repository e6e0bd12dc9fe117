"""Loopback ports picked now for a listener that binds later (a worker, or a restarted one).

Such a port is picked outside the kernel's ephemeral range. A port the kernel offers for
`bind(port 0)` comes from that range, and so does the local end of every outgoing connection
(Envoy's to a worker, a health probe, Redis, PostgreSQL): in the gap between the pick and the
bind, one of them could take it, and the listener then fails with "Address already in use".
Outside the range only another explicit bind can take a port. Ports are handed out in turn
from a random start, so that one process does not hand the same port out twice while the
first taker has yet to bind it.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import socket
import threading
from collections.abc import Collection, Iterator
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Linux's default, for where the file cannot be read.
DEFAULT_EPHEMERAL = (32768, 60999)
# Below this, ports are often well-known services' (and some systems reserve them).
LOWEST = 10000
HIGHEST = 65535


def ephemeral_range(text: str | None) -> tuple[int, int]:
    """The kernel's ephemeral range from `ip_local_port_range`'s text (two numbers), or
    Linux's default when there is none or it makes no sense."""
    try:
        low, high = (int(part) for part in (text or "").split())
    except ValueError:
        return DEFAULT_EPHEMERAL
    return (low, high) if 0 < low <= high <= HIGHEST else DEFAULT_EPHEMERAL


def candidates(ephemeral: tuple[int, int]) -> list[int]:
    """Every port from LOWEST up that the kernel never picks on its own."""
    low, high = ephemeral
    return [port for port in range(LOWEST, HIGHEST + 1) if not low <= port <= high]


def _read_range() -> tuple[int, int]:
    try:
        return ephemeral_range(EPHEMERAL_RANGE_FILE.read_text())
    except OSError:
        return ephemeral_range(None)


class _Turns:
    """The candidate ports in turn, from a random start, shared by this process's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: Iterator[int] | None = None
        self._size = 0

    def take(self) -> tuple[int, int]:
        """The next port, and how many there are in one round."""
        with self._lock:
            if self._turns is None:
                ports = candidates(_read_range())
                start = secrets.randbelow(len(ports)) if ports else 0
                self._turns = itertools.cycle(ports[start:] + ports[:start])
                self._size = len(ports)
            return (next(self._turns) if self._size else 0), self._size


_TURNS = _Turns()


def free_ports(count: int, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct ports on `host` that bind now (each held until all are picked), none
    in `avoid` (the ports the caller's other listeners will bind, free until then). Where the
    ephemeral range leaves no candidate, the kernel's port 0 offers are the fallback."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        tried = 0
        while len(ports) < count:
            port, size = _TURNS.take()
            tried += 1
            if tried > size:  # a whole round without enough: let the kernel offer
                port = 0
            elif port in avoid or port in ports:
                continue
            sock = held.enter_context(socket.socket())
            try:
                sock.bind((host, port))
            except OSError:
                continue
            port = sock.getsockname()[1]
            if port not in avoid and port not in ports:
                ports.append(port)
        return ports
