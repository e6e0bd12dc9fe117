"""A TCP proxy on 127.0.0.1 that delivers every byte a fixed delay after it arrives, both
ways: a database on the far side of a network, for tests that measure what store round
trips cost."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    # Stamped on arrival, sent when due: bytes in flight overlap as on a real link.
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            at, data = await due.get()
            await asyncio.sleep(max(0.0, at - loop.time()))
            if not data:
                break
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK):
            due.put_nowait((loop.time() + delay, data))
        due.put_nowait((loop.time() + delay, b""))
        await sender
    except ConnectionError:
        pass  # either side hung up: so does the link
    finally:
        sender.cancel()
        writer.close()


@contextlib.contextmanager
def slow_link(target_port: int, delay: float) -> Iterator[int]:
    """The port of a proxy to 127.0.0.1:`target_port` that adds `delay` seconds each way."""
    ready = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = []

    async def serve(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _pipe(client_reader, server_writer, delay),
            _pipe(server_reader, client_writer, delay),
        )

    async def main() -> None:
        stop = asyncio.Event()
        async with await asyncio.start_server(serve, "127.0.0.1", 0) as server:
            running.append((asyncio.get_running_loop(), stop, server.sockets[0].getsockname()[1]))
            ready.set()
            await stop.wait()
        # asyncio.run then cancels the connections still open.

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the slow link did not start")
    loop, stop, port = running[0]
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
