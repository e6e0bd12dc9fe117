"""Runs the real `typegpt-gateway serve` (gRPC server + Envoy) as a subprocess for tests."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from typegpt_gateway.process.ports import free_ports

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdef"
ADMIN_KEY = "admin-SECRET-key-for-tests-0123456789"
CLI = [sys.executable, "-m", "typegpt_gateway"]
# Settings under which each scripted upstream failure reaches the client as it is.
SCRIPTED_FAILURES = {"GATEWAY_UPSTREAM_MAX_ATTEMPTS": "1", "GATEWAY_UPSTREAM_COOLDOWN_AFTER": "0"}


def free_port() -> int:
    return free_ports(1)[0]


@contextlib.contextmanager
def bare_envoy(workdir: Path, grpc_port: int) -> Iterator[str]:
    """The gateway's Envoy alone, rendered as `serve` renders it, in front of whatever listens
    on `grpc_port` (a test's own gRPC server, or nothing); yields its base URL once it answers."""
    from typegpt_gateway.process.envoy import binary
    from typegpt_gateway.process.envoy_config import render_config
    from typegpt_gateway.settings import Settings

    port = free_port()
    config = workdir / "envoy.yaml"
    config.write_text(
        render_config(Settings(http_port=port, host="127.0.0.1"), grpc_port=grpc_port)
    )
    envoy = subprocess.Popen(
        [str(binary()), "-c", str(config), "--disable-hot-restart", "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and envoy.poll() is None, "Envoy did not start"
                time.sleep(0.1)
        yield url
    finally:
        envoy.terminate()
        envoy.wait(15)


def cli(
    db: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_DB": str(db), **(env or {})}
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, check=check, timeout=60
    )


@dataclass
class Gateway:
    workdir: Path
    upstream_url: str
    upstream_key: str | None = UPSTREAM_KEY
    admin_key: str | None = ADMIN_KEY
    extra_env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    # With a CA file, the gateway is expected to serve HTTPS that this CA vouches for.
    ca_file: Path | None = None
    # Backend processes; 1 (one process, as before workers) unless a test asks for more.
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None

    @property
    def db(self) -> Path:
        return self.workdir / "keys.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this gateway's HTTP port."""
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("GATEWAY_", "TYPEGPT_"))
        }
        env.update(
            GATEWAY_DB=str(self.db),
            TYPEGPT_BASE_URL=self.upstream_url,
            GATEWAY_SSE_KEEPALIVE_INTERVAL="1",
            GATEWAY_KEY_REFRESH_INTERVAL="0.2",
            GATEWAY_METRICS_PORT=str(self.metrics_port),
            # Within stop()'s patience, even with a request left hanging.
            GATEWAY_DRAIN_TIMEOUT="5",
            GATEWAY_USAGE_FLUSH_INTERVAL="0.2",
        )
        if self.upstream_key is not None:
            env["TYPEGPT_API_KEY"] = self.upstream_key
        if self.admin_key is not None:
            env["GATEWAY_ADMIN_KEY"] = self.admin_key
        for name in ("DATABASE_URL", "REDIS_URL"):  # only what a test asks for
            env.pop(name, None)
        env.update(self.extra_env)
        return env

    def spawn(self, *args: str, output: int | None = None) -> subprocess.Popen[bytes]:
        """Starts `serve` (with `args` added) and returns at once. Its stdout and stderr go to
        the log file, or to `output` (subprocess.PIPE: the test reads them, or leaves them
        unread to stall the gateway's log)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *CLI,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--http-port",
                    str(self.http_port),
                    "--grpc-port",
                    str(self.grpc_port),
                    "--workers",
                    str(self.workers),
                    *args,
                ],
                env=self.env(),
                stdout=log if output is None else output,
                stderr=subprocess.STDOUT,
            )
        return self.process

    def start(self, timeout: float = 30.0, *, output: int | None = None) -> Gateway:
        process = self.spawn(output=output)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                if (
                    httpx.get(f"{self.url}/healthz", timeout=1, verify=self.verify).status_code
                    == 200
                ):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway not healthy in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def flushed_log(self, timeout: float = 10.0) -> str:
        """The log of a running gateway with every line logged so far in it: a request made
        now (an admin call, which any caller may make and which is always logged) has its
        line written after all of those."""
        marker = f"flush-{uuid.uuid4().hex}"
        httpx.get(f"{self.url}/v1/admin/keys", headers={"x-request-id": marker}, verify=self.verify)
        if self.wait_for_log(re.escape(marker), timeout) is None:
            raise TimeoutError("the gateway's log did not catch up")
        return self.log()

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str] | None:
        """The first match of the regular expression in the log, waiting for it: the gateway
        writes its lines from a thread of its own, in batches, a moment after they happen."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log(), re.MULTILINE)
            if match is not None or time.monotonic() > deadline:
                return match
            time.sleep(0.05)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI against this gateway's key store."""
        return cli(self.db, *args, check=check, env=self.extra_env)

    def ledger_requests(self, name: str) -> int:
        """Requests the usage ledger counts for key `name`, read as an operator reads it."""
        rows = json.loads(self.cli("keys", "usage", name, "--json").stdout)
        return sum(row["requests"] for row in rows)

    def wait_for_ledger(self, expected: dict[str, int], timeout: float = 30.0) -> dict[str, int]:
        """The ledger's request counts of the keys named in `expected`, once each has reached
        its expected count (the ledger is written every flush interval), or when time is up."""
        deadline = time.monotonic() + timeout
        while True:
            found = {name: self.ledger_requests(name) for name in expected}
            reached = all(found[name] >= count for name, count in expected.items())
            if reached or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def create_key(self, name: str, *options: str) -> str:
        result = self.cli("keys", "create", "--name", name, *options)
        return result.stdout.strip().splitlines()[-1]

    def ledger_totals(self, name: str, *, requests: int) -> dict[str, int]:
        """Key `name`'s ledger totals once `requests` requests are in it."""
        from typegpt_gateway.keystore.sqlite import KeyStore
        from typegpt_gateway.keystore.store import UsageRow

        # Every counter of a row: all its fields but the day and the model.
        counters = [field.name for field in dataclasses.fields(UsageRow)[2:]]
        deadline = time.monotonic() + 10
        while True:
            store = KeyStore(self.db)
            try:
                rows = store.usage(name)
            finally:
                store.close()
            totals = {field: sum(getattr(row, field) for row in rows) for field in counters}
            if totals["requests"] >= requests:
                return totals
            assert time.monotonic() < deadline, f"ledger never reached {requests}: {totals}"
            time.sleep(0.1)

    def wait_for_key(self, key: str, timeout: float = 5.0) -> str:
        """Waits until the running gateway has loaded a key the CLI just made."""
        deadline = time.monotonic() + timeout
        headers = {"authorization": f"Bearer {key}"}
        models = f"{self.url}/v1/models"
        while httpx.get(models, headers=headers, verify=self.verify).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway never accepted the new key")
            time.sleep(0.05)
        return key

    def revoke_key(self, name: str) -> None:
        self.cli("keys", "revoke", name)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def running(workdir: Path, upstream_url: str, **settings: object) -> Iterator[Gateway]:
    """A started gateway with its own settings (Gateway fields), stopped on leaving."""
    gw = Gateway(workdir, upstream_url, **settings).start()  # type: ignore[arg-type]
    try:
        yield gw
    finally:
        gw.stop()
