"""The Envoy sidecar's config, rendered from envoy/envoy.yaml.in and the Lua filter: which
routes need a key, the error types, timeouts, TLS and CORS. Pure."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template

from ..api.access import CONSOLE_SERVICE, console_prefix, keyless_paths
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
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
TRANSCODER_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
# The console's answers: it runs only its own files (no inline script or style, no other
# origin), may not be framed, and sends no referrer; its files are checked again on each load so
# that an upgrade shows at once.
CONSOLE_HEADERS = {
    "content-security-policy": "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
# Several workers: how often Envoy asks each for grpc.health.v1 (a dead one is out within about
# this long; requests that meet it before then fail to connect and go to another worker), how
# long an answer may take (a dead worker refuses at once; a busy one must not be taken out),
# and the service asked: alive and not draining, never readiness (backend.py).
HEALTH_CHECK_INTERVAL = "0.5s"
HEALTH_CHECK_TIMEOUT = "5s"
WORKER_HEALTH_SERVICE = "typegpt.gateway.worker"
# The direct gRPC listener's header cap: the backend's own metadata limit (backend.py).
GRPC_HEADERS_KB = 64
# Indentation of ${backend_balancing} and ${backend_endpoints} in the template.
CLUSTER_INDENT = " " * 4
ENDPOINTS_INDENT = " " * 8


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
    grpc_port: int | None = None,
    worker_ports: Sequence[int] = (),
    backend_host: str | None = None,
    assets: Path | None = None,
) -> str:
    """Envoy's config in front of one backend on `grpc_port`, or in front of the workers on
    `worker_ports` (loopback), with the direct gRPC port (settings.grpc_port) on Envoy too."""
    if (grpc_port is None) == (not worker_ports):
        raise ValueError("give either grpc_port (one backend) or worker_ports")
    assets = assets or assets_dir()
    host = backend_host or connect_host_for(settings.grpc_host)
    ports = list(worker_ports) if grpc_port is None else [grpc_port]
    # The template is always read here; `assets` is where Envoy will find the files.
    template = Template((assets_dir() / CONFIG_TEMPLATE).read_text())
    cors_filter, cors_policy = cors.envoy_config(settings.cors_origins)
    return template.substitute(
        admin_port=settings.envoy_admin_port,
        http_host=settings.host,
        http_port=settings.http_port,
        backend_endpoints=backend_endpoints(host, ports),
        backend_balancing=backend_balancing(len(worker_ports)),
        route_balancing=route_balancing(len(worker_ports)),
        grpc_listener=grpc_listener(settings, workers=len(worker_ports)),
        lua_source=_literal_block(lua_source(), LUA_SOURCE_INDENT),
        descriptor_path=assets / DESCRIPTOR,
        max_body_bytes=settings.max_body_bytes,
        admin_body_bytes=ADMIN_BODY_BYTES,
        keyless_routes=keyless_routes(len(worker_ports)),
        console_routes=console_routes(assets / DESCRIPTOR, len(worker_ports)),
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


def keyless_routes(workers: int = 0) -> str:
    """Routes of their own for keyless_paths, without the Lua filter's missing-key answer.
    Lines of one-line JSON, which is YAML, at the template's indentation."""
    route = {"cluster": "grpc_backend", **_worker_route_options(workers)}
    routes = [{"match": {"path": path}, "route": route} for path in keyless_paths()]
    return "\n              ".join(f"- {json.dumps(route)}" for route in routes)


def console_routes(descriptor: Path, workers: int = 0) -> str:
    """The console's folder (/admin/, and /admin redirected to it), keyless, each answer with
    CONSOLE_HEADERS. Set here rather than by the backend: they then cover Envoy's own replies
    under /admin/ too (backend down, a malformed path), and the compose config carries them.

    The transcoder normally picks the route again after rewriting the path to the gRPC method,
    which would lose these headers: this route's own transcoder keeps the incoming route."""
    folder = console_prefix()
    headers = [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in CONSOLE_HEADERS.items()
    ]
    transcoder = {
        "@type": TRANSCODER_TYPE,
        "proto_descriptor": str(descriptor),
        "services": [CONSOLE_SERVICE.full_name],
        "match_incoming_request_route": True,
        "request_validation_options": {"reject_unknown_method": True},
        "ignore_unknown_query_parameters": True,
    }
    # The folder without its slash would be transcoded too (`**` matches nothing), and its
    # page's relative links would then point above it.
    no_transcoder = {"@type": FILTER_CONFIG_TYPE, "disabled": True}
    routes = [
        {
            "match": {"path": folder.rstrip("/")},
            "redirect": {"path_redirect": folder},
            "typed_per_filter_config": {TRANSCODER: no_transcoder},
        },
        {
            "match": {"prefix": folder},
            "route": {
                "cluster": "grpc_backend",
                "timeout": "60s",
                **_worker_route_options(workers),
            },
            "response_headers_to_add": headers,
            "typed_per_filter_config": {TRANSCODER: transcoder},
        },
    ]
    return "\n              ".join(f"- {json.dumps(route)}" for route in routes)


def backend_endpoints(host: str, ports: Sequence[int]) -> str:
    """The backend cluster's endpoints, one line of JSON each."""
    lines = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for port in ports
    ]
    return f"\n{ENDPOINTS_INDENT}".join(f"- {json.dumps(line)}" for line in lines)


def backend_balancing(workers: int) -> str:
    """With several workers: every request of one client key to the same worker (a consistent
    hash of its Authorization header, route_balancing), and none to a worker that is down or
    draining (grpc.health.v1, asked every HEALTH_CHECK_INTERVAL)."""
    if not workers:
        return "# One backend: nothing to balance."
    interval = HEALTH_CHECK_INTERVAL
    health_check = {
        "timeout": HEALTH_CHECK_TIMEOUT,
        "interval": interval,
        # Without traffic Envoy would check only every 60 s: a worker's death must show at once.
        "no_traffic_interval": interval,
        "unhealthy_interval": interval,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": WORKER_HEALTH_SERVICE},
    }
    lines = ["lb_policy: RING_HASH", f"health_checks: [{json.dumps(health_check)}]"]
    return f"\n{CLUSTER_INDENT}".join(lines)


def _worker_route_options(workers: int) -> dict[str, object]:
    if not workers:
        return {}
    previous_hosts = {
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        },
    }
    return {
        # Requests without a key hash alike and may go anywhere; each key stays on one worker.
        "hash_policy": [{"header": {"header_name": "authorization"}}],
        # Only requests no worker has seen: a worker that died before the health check
        # noticed refuses the connection, and another worker answers instead. (Not a refused
        # stream: that worker is alive, and another one would count the key's limits afresh.)
        "retry_policy": {
            "retry_on": "connect-failure",
            "num_retries": 2,
            "retry_host_predicate": [previous_hosts],
            "host_selection_retry_max_attempts": 5,
        },
    }


def route_balancing(workers: int) -> str:
    """What a route to the backend adds with several workers, as more entries of its flow
    mapping (JSON is YAML), or nothing."""
    options = _worker_route_options(workers)
    return "".join(f", {key}: {json.dumps(value)}" for key, value in options.items())


def grpc_listener(settings: Settings, *, workers: int) -> str:
    """With several workers, the direct gRPC port is Envoy's too, so that its callers meet the
    same pinning of keys: a plain HTTP/2 proxy (no transcoder, no Lua: gRPC clients get the
    backend's own answers, as on the backend's own port)."""
    if not workers:
        return "# The direct gRPC port is the backend's own."
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": "grpc_backend", "timeout": "0s", **_worker_route_options(workers)},
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "grpc",
        "codec_type": "HTTP2",
        "server_header_transformation": "PASS_THROUGH",
        # The backend names requests itself, as on its own port.
        "generate_request_id": False,
        "max_request_headers_kb": GRPC_HEADERS_KB,
        "stream_idle_timeout": f"{stream_idle_timeout(settings)}s",
        "http2_protocol_options": {"max_concurrent_streams": settings.grpc_max_concurrent_streams},
        "route_config": {
            "name": "grpc",
            "virtual_hosts": [{"name": "grpc", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            }
        ],
    }
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
    chain: dict[str, object] = {"filters": [hcm]}
    tls = _downstream_tls(settings.grpc_tls_cert, settings.grpc_tls_key)
    if tls is not None:
        chain["transport_socket"] = tls
    listener = {
        "name": "grpc",
        "address": {
            "socket_address": {"address": settings.grpc_host, "port_value": settings.grpc_port}
        },
        "per_connection_buffer_limit_bytes": settings.max_body_bytes + MiB,
        "filter_chains": [chain],
    }
    return f"- {json.dumps(listener)}"


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
    tls = _downstream_tls(cert, key)
    if tls is None:
        return "# Plain HTTP: no TLS certificate configured (--tls-cert/--tls-key)."
    # JSON is YAML: one line that needs no indentation care.
    return f"transport_socket: {json.dumps(tls)}"


def _downstream_tls(cert: Path | None, key: Path | None) -> dict[str, object] | None:
    if cert is None or key is None:
        return None
    files = {
        "certificate_chain": {"filename": str(cert.expanduser().resolve())},
        "private_key": {"filename": str(key.expanduser().resolve())},
    }
    return {
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
