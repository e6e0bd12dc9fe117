"""The console service: the admin console's files at GET /admin/ (a fixed set, read once)."""

from __future__ import annotations

from importlib import resources
from types import MappingProxyType

import grpc
from google.api import httpbody_pb2

from typegpt.gateway.v1 import console_pb2, console_pb2_grpc

from ..errors import GatewayError
from .rpc import abort

# The folder of the package that holds the console's files (HTML, CSS, JS modules, and the
# vendored charting library).
FOLDER = "console"
# Every file the console has, by the path it is asked for under /admin/. Requests are looked up
# here and nowhere else: a path is never joined onto a folder, so no request reaches another
# file. tests/api/test_console_service.py checks that this list and the folder agree.
FILES: MappingProxyType[str, str] = MappingProxyType(
    {
        "": "index.html",
        "index.html": "index.html",
        "console.css": "console.css",
        "app.js": "app.js",
        "api.js": "api.js",
        "dom.js": "dom.js",
        "keys.js": "keys.js",
        "usage.js": "usage.js",
        "vendor/chart.umd.min.js": "vendor/chart.umd.min.js",
    }
)
CONTENT_TYPES = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
    }
)


def not_found() -> GatewayError:
    return GatewayError(404, "The console has no such page.", "invalid_request_error")


def content_type(name: str) -> str:
    return CONTENT_TYPES["." + name.rsplit(".", 1)[-1]]


def load_files() -> dict[str, httpbody_pb2.HttpBody]:
    """Each request path's answer, read from the installed package."""
    folder = resources.files("typegpt_gateway") / FOLDER
    bodies: dict[str, httpbody_pb2.HttpBody] = {}
    for path, name in FILES.items():
        source = folder
        for part in name.split("/"):
            source = source / part
        bodies[path] = httpbody_pb2.HttpBody(
            content_type=content_type(name), data=source.read_bytes()
        )
    return bodies


class ConsoleServicer(console_pb2_grpc.ConsoleServiceServicer):
    """Answers from memory: the files are a few hundred KiB, read at start-up."""

    def __init__(self) -> None:
        self._bodies = load_files()

    async def GetConsoleFile(
        self,
        request: console_pb2.GetConsoleFileRequest,
        context: grpc.aio.ServicerContext[
            console_pb2.GetConsoleFileRequest, console_pb2.GetConsoleFileResponse
        ],
    ) -> console_pb2.GetConsoleFileResponse:
        body = self._bodies.get(request.path)
        if body is None:
            await abort(context, not_found())
        return console_pb2.GetConsoleFileResponse(http_body=body)
