"""Logging: one JSON object per line on stderr, for log shippers and `jq` alike.

Every line has time, level, logger and message; a line logged while a request is handled also
has its request_id. The per-request line (logger `typegpt_gateway.requests`) is written by
observe.Exchange. Keys never reach a log line: only key names do.

Lines are formatted where they are logged and written to stderr by a thread of their own,
through a bounded queue: a slow reader of stderr (a full pipe, a stalled `docker logs`) never
stalls the event loop. While the queue is full, lines are dropped and counted; a warning saying
how many takes their place once the queue has room again. Envoy's lines, relayed by serve, take
the same queue (write_line). At exit, what is queued is written (for at most STOP_TIMEOUT).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import select
import sys
import threading
import time
from logging.handlers import QueueHandler

from pythonjsonlogger.orjson import OrjsonFormatter

from . import observe

# Text (in characters) that waits for a slow reader before lines are dropped: seconds of a
# busy gateway's lines, and still little memory.
QUEUE_CHARS = 8 * 1024 * 1024
# How long the exit waits for queued lines to be written: a reader stalled for good loses them
# rather than hold the process.
STOP_TIMEOUT = 5.0
# Lines are written at most this late, in one write for all that came meanwhile.
BATCH_WINDOW = 0.05


class _RequestId(logging.Filter):
    # A filter of the queueing handler, so it runs where the record is logged: the request is
    # found through a context variable, which the writer's thread does not see.
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            exchange = observe.running()
            if exchange is not None:
                record.request_id = exchange.request_id
        return True


class _NoMetadataEncodingErrors(logging.Filter):
    """grpc logs an ERROR with a traceback for each metadata value that is not UTF-8, each
    time the call's metadata is read (several times a call), then goes on with the value read
    as Latin-1: one request with 95 such headers made 286 lines, and the lines quote the
    values, a key included. A client's bytes, nothing to act on: the request's own line is
    enough."""

    # grpc's own format string (grpc_string.pyx.pxi, _decode).
    MESSAGE = "Invalid encoding on %s"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.MESSAGE


# One instance: configure() may run more than once, and addFilter keeps a filter once.
_no_metadata_encoding_errors = _NoMetadataEncodingErrors()


def json_formatter(static_fields: dict[str, object] | None = None) -> logging.Formatter:
    """Each record as one JSON object (with `static_fields` on every line)."""
    # orjson: half the cost of the standard json module, on a line written per request.
    return OrjsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields=static_fields,
        timestamp="time",
    )


def name_worker(index: int) -> None:
    """Every line from now on says it is worker `index`'s: `serve`'s workers share its
    stderr."""
    if _queueing is not None:
        _queueing.setFormatter(json_formatter({"worker": index}))


def _size(line: str | None) -> int:
    # The stop sentinel (None) counts as well: Queue.get waits while the size is 0.
    return len(line or "") + 1


class _Lines(queue.Queue[str | None]):
    """Formatted lines, bounded by their total length rather than their number: with
    GATEWAY_LOG_BODIES one line can be 64 KiB. The overridden methods are queue.Queue's own
    extension points (LifoQueue and PriorityQueue use them), called under its lock."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._chars = 0

    def _qsize(self) -> int:
        return self._chars

    def _put(self, item: str | None) -> None:
        super()._put(item)
        self._chars += _size(item)

    def _get(self) -> str | None:
        item = super()._get()
        self._chars -= _size(item)
        return item


class _Queueing(QueueHandler):
    """Formats each record into its line and queues it without ever waiting; a line that does
    not fit is dropped and counted."""

    queue: _Lines

    def __init__(self, lines: _Lines) -> None:
        super().__init__(lines)
        self._dropped = 0
        self._dropped_lock = threading.Lock()  # records are logged from several threads

    def prepare(self, record: logging.LogRecord) -> str:
        return self.format(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.queue.full():  # spares formatting a line that cannot be queued
            self._drop(1)
            return
        super().emit(record)

    # QueueHandler hands enqueue what prepare returned: here the line, where the stubs expect
    # the record that the base class's prepare would return.
    def enqueue(self, line: str) -> None:  # type: ignore[override]
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        # In the place of the lost lines, so that the log shows where they are missing.
        if dropped and not self._put(self.format(_dropped_record(dropped))):
            self._drop(dropped)
        if not self._put(line):
            self._drop(1)

    def _put(self, line: str) -> bool:
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            return False
        return True

    def _drop(self, count: int) -> None:
        with self._dropped_lock:
            self._dropped += count


def _dropped_record(count: int) -> logging.LogRecord:
    return logging.LogRecord(
        __name__,
        logging.WARNING,
        __file__,
        0,
        "%d log lines were dropped: stderr was read more slowly than they were written",
        (count,),
        None,
    )


class _Writer:
    """Writes the queued lines to a file descriptor, on a thread of its own.

    The thread wakes at most once per BATCH_WINDOW and writes what came meanwhile in one
    write: a busy gateway logs a line per request, and waking a thread for each one costs the
    event loop's thread about 40 µs of CPU a line (GIL hand-offs), a tenth of a request.
    os.write and no logging.Handler: a write stalled for good then holds no lock that the
    exit needs (logging.shutdown takes every handler's lock, the interpreter sys.stderr's)."""

    def __init__(self, lines: _Lines, fd: int) -> None:
        self.queue = lines
        self._fd = fd
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            time.sleep(BATCH_WINDOW)  # nobody waits on the queue meanwhile: puts stay cheap
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None:
                    batch.append(self.queue.get_nowait())
            stopping = batch[-1] is None
            self._write([line for line in batch if line is not None])
            if stopping:
                return

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        data = memoryview(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
        try:
            while data:
                try:
                    data = data[os.write(self._fd, data) :]
                except BlockingIOError:  # stderr made non-blocking by a process sharing it
                    select.select([], [self._fd], [])
        except OSError:
            pass  # stderr is closed: nothing can be told, and the queue must keep draining

    def stop(self) -> None:
        """Writes what is queued and stops, waiting STOP_TIMEOUT at most."""
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        try:
            self.queue.put(None, timeout=STOP_TIMEOUT)
        except queue.Full:
            return
        thread.join(max(0.0, deadline - time.monotonic()))
        self._thread = None


_queueing: _Queueing | None = None


def configure(level: int = logging.INFO) -> None:
    """Sends every record to stderr as JSON, through the queue; the queue is written out
    at exit."""
    global _queueing
    lines = _Lines(QUEUE_CHARS)
    handler = _Queueing(lines)
    handler.setFormatter(json_formatter())
    handler.addFilter(_RequestId())
    writer = _Writer(lines, sys.stderr.fileno())
    writer.start()
    # Registered after logging's own exit hook, so it runs before it.
    atexit.register(writer.stop)
    _queueing = handler

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("grpc._cython.cygrpc").addFilter(_no_metadata_encoding_errors)
    # No line prints the caller's file and line, thread or process: a record need not look
    # them up, which it would on every request (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def write_line(line: str) -> None:
    """Writes a line that is formatted already (Envoy's own JSON lines) among the gateway's,
    through the same queue."""
    if _queueing is None:  # configure() was not called: the line is logged as a message
        logging.getLogger("envoy").info("%s", line)
    else:
        _queueing.enqueue(line)
