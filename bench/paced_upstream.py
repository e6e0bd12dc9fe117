"""A paced SSE upstream for bench/streams.py: every POST gets an OpenAI-shaped stream of
`--chunks` chunks, `--interval` seconds apart, then the usage chunk when the body asks for it
(`stream_options.include_usage`, as the gateway always does) and `[DONE]`. Each chunk is its
own write, so that a reader sees it arrive alone, as from a model generating tokens. Runs in a
process of its own, so that its CPU is neither the client's nor the gateway's.

    python bench/paced_upstream.py --port 8080 [--chunks 20] [--interval 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def chunk_event(index: int) -> str:
    """One chat.completion.chunk as the benchmarks' upstreams send it (JSON, no framing)."""
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "delta": {"content": f"t{index}"},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    return json.dumps(event)


def chunk(index: int) -> bytes:
    return f"data: {chunk_event(index)}\n\n".encode()


USAGE = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":20,'
    b'"total_tokens":25}}\n\n'
)


def app(chunks: int, interval: float) -> web.Application:
    frames = [chunk(index) for index in range(chunks)]

    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, frame in enumerate(frames):
            if index:
                await asyncio.sleep(interval)
            await response.write(frame)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(USAGE)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    application = web.Application()
    application.router.add_post("/{tail:.*}", stream)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    web.run_app(
        app(args.chunks, args.interval),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
