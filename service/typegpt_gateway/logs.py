"""Logging: one JSON object per line on stderr, for log shippers and `jq` alike.

Every line has time, level, logger and message; a line logged while a request is handled also
has its request_id. The per-request line (logger `typegpt_gateway.requests`) is written by
observe.Exchange. Keys never reach a log line: only key names do.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.orjson import OrjsonFormatter

from . import observe


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            exchange = observe.running()
            if exchange is not None:
                record.request_id = exchange.request_id
        return True


def json_handler() -> logging.Handler:
    """A stderr handler writing each record as one JSON object."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        # orjson: half the cost of the standard json module, on a line written per request.
        OrjsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
    )
    handler.addFilter(_RequestId())
    return handler


def configure(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.handlers[:] = [json_handler()]
    root.setLevel(level)
    # httpx (Envoy's admin calls, the startup health check) logs each request at INFO: noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # No line prints the caller's file and line, thread or process: a record need not look
    # them up, which it would on every request (the logging HOWTO's "Optimization").
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
