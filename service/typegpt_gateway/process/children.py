"""What every process `serve` starts (Envoy, the workers) shares: it ends with `serve`."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_parent() -> None:
    """In the child before it runs: SIGTERM (a drain) when `serve` dies without passing one on
    (SIGKILL, a crash), so that no orphan keeps serving on its port. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
