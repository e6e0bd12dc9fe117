"""The Envoy sidecar's config, rendered from envoy/envoy.yaml.in and the Lua filter: which
routes need a key, the error types, timeouts, TLS and CORS. Pure."""

from __future__ import annotations

import json
import math
import textwrap
from importlib import resources
from pathlib import Path
from string import Template

from ..api.access import keyless_paths
from ..errors import GatewayError, default_error_type
from ..keystore.records import missing_key_error
from ..settings import MiB, Settings
from . import cors

CONFIG_TEMPLATE = "envoy.yaml.in"
LUA_FILTER = "openai_errors.lua"
# Where the Lua filter's ERROR_TYPES gets its entries (lua_source).
LUA_ERROR_TYPES_MARKER = "--[[ error types ]]"
# Every status an error can have: Envoy's own replies, and the statuses Envoy gives bare gRPC
# codes, are among them.
ERROR_STATUSES = range(400, 600)
# The indentation of ${lua_source} in the template, a YAML literal block.
LUA_SOURCE_INDENT = " " * 18
DESCRIPTOR = "gateway.pb"
# The admin API's request bodies (a key's name, models and limits) are a few hundred bytes.
ADMIN_BODY_BYTES = 64 * 1024


def assets_dir() -> Path:
    """envoy/ of the repo in a source checkout, or its copy inside an installed wheel."""
    packaged = Path(str(resources.files("typegpt_gateway"))) / "_envoy"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "envoy"


def connect_host_for(bind_host: str) -> str:
    # A wildcard bind is reached through loopback.
    if bind_host in ("0.0.0.0", ""):  # noqa: S104
        return "127.0.0.1"
    if bind_host == "::":
        return "::1"
    return bind_host


def render_config(
    settings: Settings,
    *,
    grpc_port: int,
    backend_host: str | None = None,
    assets: Path | None = None,
) -> str:
    assets = assets or assets_dir()
    # The template is always read here; `assets` is where Envoy will find the files.
    template = Template((assets_dir() / CONFIG_TEMPLATE).read_text())
    cors_filter, cors_policy = cors.envoy_config(settings.cors_origins)
    return template.substitute(
        admin_port=settings.envoy_admin_port,
        http_host=settings.host,
        http_port=settings.http_port,
        backend_host=backend_host or connect_host_for(settings.grpc_host),
        grpc_port=grpc_port,
        lua_source=_literal_block(lua_source(), LUA_SOURCE_INDENT),
        descriptor_path=assets / DESCRIPTOR,
        max_body_bytes=settings.max_body_bytes,
        admin_body_bytes=ADMIN_BODY_BYTES,
        keyless_routes=keyless_routes(),
        missing_key=lua_refusal(missing_key_error()),
        max_connections=settings.max_connections,
        grpc_max_concurrent_streams=settings.grpc_max_concurrent_streams,
        # A little over the body limit: headers and framing share the connection buffer.
        buffer_limit_bytes=settings.max_body_bytes + MiB,
        stream_idle_timeout=f"{stream_idle_timeout(settings)}s",
        request_headers_timeout=_duration(settings.request_headers_timeout),
        request_timeout=_duration(settings.request_body_timeout),
        cors_filter=cors_filter,
        cors_policy=cors_policy,
        transport_socket=transport_socket(settings.tls_cert, settings.tls_key),
    )


def lua_source() -> str:
    """The Lua filter as Envoy runs it: envoy/openai_errors.lua with the backend's error type
    of every error status (errors.default_error_type) written into its ERROR_TYPES."""
    source = (assets_dir() / LUA_FILTER).read_text()
    if source.count(LUA_ERROR_TYPES_MARKER) != 1:
        raise ValueError(f"{LUA_FILTER} must hold {LUA_ERROR_TYPES_MARKER!r} exactly once")
    entries = " ".join(f'[{status}]="{default_error_type(status)}",' for status in ERROR_STATUSES)
    lines = textwrap.wrap(entries, width=96, initial_indent="  ", subsequent_indent="  ")
    return source.replace(LUA_ERROR_TYPES_MARKER, "\n" + "\n".join(lines) + "\n")


def _literal_block(text: str, indent: str) -> str:
    """`text` as the body of a YAML literal block (`|`) whose first line the template indents:
    the other lines get the same indentation, blank ones none (no trailing spaces)."""
    lines = text.splitlines()
    return "\n".join([lines[0], *(indent + line if line else "" for line in lines[1:])])


def keyless_routes() -> str:
    """Routes of their own for keyless_paths, without the Lua filter's missing-key answer.
    Lines of one-line JSON, which is YAML, at the template's indentation."""
    routes = [
        {"match": {"path": path}, "route": {"cluster": "grpc_backend"}} for path in keyless_paths()
    ]
    return "\n              ".join(f"- {json.dumps(route)}" for route in routes)


def lua_refusal(error: GatewayError) -> str:
    """Route metadata for the Lua filter: the status and body it answers a request without a
    key with, exactly those of the backend's own `error`."""
    return json.dumps({"missing_key": {"status": str(error.status), "body": error.to_json()}})


def stream_idle_timeout(settings: Settings) -> int:
    """Seconds Envoy lets a request stay silent: a non-streamed answer says nothing until it is
    complete, which the gateway bounds by the upstream total timeout; a minute more lets the
    gateway's own 504 arrive first."""
    return math.ceil(settings.upstream_total_timeout) + 60


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def transport_socket(cert: Path | None, key: Path | None) -> str:
    """The HTTP listener's TLS setting, one line of YAML, or a comment when there is none."""
    if cert is None or key is None:
        return "# Plain HTTP: no TLS certificate configured (--tls-cert/--tls-key)."
    files = {
        "certificate_chain": {"filename": str(cert.expanduser().resolve())},
        "private_key": {"filename": str(key.expanduser().resolve())},
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            # h2 for native gRPC clients, http/1.1 for everyone else.
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [files],
            },
        },
    }
    # JSON is YAML: one line that needs no indentation care.
    return f"transport_socket: {json.dumps(tls)}"
