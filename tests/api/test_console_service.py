"""The console service in process: a real grpc.aio server with ConsoleServicer alone, asked
over a channel. It answers only the files of its fixed list, each with its bytes and type."""

from __future__ import annotations

import asyncio
from importlib import resources

import grpc
import pytest

from typegpt.gateway.v1 import console_pb2, console_pb2_grpc
from typegpt_gateway.api.console_service import FILES, FOLDER, ConsoleServicer

TEST_TIMEOUT = 10.0
FOLDER_PATH = resources.files("typegpt_gateway") / FOLDER


def folder_files() -> set[str]:
    found = set()

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                found.add(f"{prefix}{child.name}")

    walk(FOLDER_PATH, "")
    return found


async def ask(
    paths: list[str],
) -> list[tuple[grpc.StatusCode, console_pb2.GetConsoleFileResponse | None, dict[str, str]]]:
    server = grpc.aio.server()
    console_pb2_grpc.add_ConsoleServiceServicer_to_server(ConsoleServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    answers = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = console_pb2_grpc.ConsoleServiceStub(channel)
            for path in paths:
                call = stub.GetConsoleFile(console_pb2.GetConsoleFileRequest(path=path))
                try:
                    answers.append((grpc.StatusCode.OK, await call, {}))
                except grpc.aio.AioRpcError as error:
                    trailers = {key: value for key, value in error.trailing_metadata() or ()}
                    answers.append((error.code(), None, trailers))
    finally:
        await server.stop(None)
    return answers


def run(paths: list[str]):
    return asyncio.run(asyncio.wait_for(ask(paths), TEST_TIMEOUT))


def test_the_list_names_every_file_of_the_folder_and_nothing_else():
    assert set(FILES.values()) == folder_files()


def test_each_file_is_served_with_its_bytes_and_type():
    paths = list(FILES)
    for path, (code, answer, _) in zip(paths, run(paths), strict=True):
        assert code == grpc.StatusCode.OK, path
        name = FILES[path]
        source = FOLDER_PATH
        for part in name.split("/"):
            source = source / part
        assert answer.http_body.data == source.read_bytes()
        expected = {"html": "text/html", "css": "text/css", "js": "text/javascript"}
        assert answer.http_body.content_type == f"{expected[name.rsplit('.', 1)[1]]}; charset=utf-8"
    assert run([""])[0][1].http_body.data.startswith(b"<!doctype html>")


@pytest.mark.parametrize(
    "path",
    [
        "nope.js",
        "../api/console_service.py",
        "../../../../etc/passwd",
        "/etc/passwd",
        "vendor",
        "vendor/",
        "index.html/",
        "./app.js",
        "INDEX.HTML",
        "%2e%2e/settings.py",
        "vendor/chart.umd.min.js.map",
        "app.js\x00.png",
    ],
)
def test_anything_else_is_not_found(path):
    ((code, _, trailers),) = run([path])
    assert code == grpc.StatusCode.NOT_FOUND
    assert trailers["x-http-status"] == "404"
    assert "no such page" in trailers["x-openai-error"]
