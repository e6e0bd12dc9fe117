"""The `typegpt-gateway` command."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import sys
from collections.abc import Coroutine, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from .errors import GatewayError
from .keystore.admin import KeyAdmin
from .keystore.key_limits import micro_to_usd
from .keystore.opening import open_store
from .keystore.records import KeyRecord, parse_duration
from .keystore.store import BackupUnsupportedError, SchemaTooNewError
from .redaction import install_log_redaction
from .settings import Settings

app = typer.Typer(help="OpenAI-compatible gateway in front of TypeGPT.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage client API keys (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db", help="SQLite key store (default: $GATEWAY_DB; $DATABASE_URL for PostgreSQL)."
    ),
]
# Limits: a positive number, or 'unlimited' (which, in `keys update`, removes the limit).
_LIMIT_HELP = " A positive number or 'unlimited' (default: unlimited)."
RpmOption = Annotated[str | None, typer.Option(help="Requests per minute." + _LIMIT_HELP)]
TpmOption = Annotated[
    str | None,
    typer.Option(help="Tokens per minute (prompt + completion)." + _LIMIT_HELP),
]
ConcurrentOption = Annotated[
    str | None,
    typer.Option("--max-concurrent", help="Requests in flight at once." + _LIMIT_HELP),
]
BudgetOption = Annotated[
    str | None,
    typer.Option("--budget-tokens", help="Tokens per budget period." + _LIMIT_HELP),
]
UsdOption = Annotated[
    str | None,
    typer.Option(
        "--budget-usd",
        help="Dollars per budget period, e.g. 25 or 0.50 (at the prices in the config file)."
        + _LIMIT_HELP,
    ),
]
PeriodOption = Annotated[
    str | None,
    typer.Option(
        "--budget-period",
        help="The period of both budgets: day or month (UTC; default month).",
    ),
]


def _settings(**overrides: Any) -> Settings:
    # Any: Settings validates each option's value as it does the environment's.
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


@app.command()
def serve(
    http_port: Annotated[int | None, typer.Option(help="REST port (default 7000).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 50051).")] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 0.0.0.0).")
    ] = None,
    grpc_host: Annotated[str | None, typer.Option(help="gRPC listen address.")] = None,
    db: DbOption = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="YAML file listing the upstreams (default: $GATEWAY_CONFIG)."
        ),
    ] = None,
    envoy: Annotated[
        bool,
        typer.Option(
            "--envoy/--no-envoy",
            help="Run the Envoy sidecar here; --no-envoy serves gRPC only, for an Envoy run "
            "elsewhere (docker compose).",
        ),
    ] = True,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port (default 9464; 0: off).")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: HTTPS on the HTTP port.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Backend processes behind Envoy, each client key pinned to one (default: "
            "the usable CPU cores, at most 8; ignored with --no-envoy).",
            min=1,
        ),
    ] = None,
) -> None:
    """Run the gateway: the gRPC server and the Envoy sidecar on the HTTP port."""
    from .ops.logs import configure

    configure(logging.INFO)
    install_log_redaction()
    try:
        settings = _settings(
            http_port=http_port,
            grpc_port=grpc_port,
            host=host,
            grpc_host=grpc_host,
            db=db,
            config=config,
            metrics_port=metrics_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            workers=workers,
        )
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        typer.echo(f"error: invalid settings: {problems}", err=True)
        raise typer.Exit(2) from None
    if settings.worker_index is not None:
        from .ops.logs import name_worker

        name_worker(settings.worker_index)
    sys.exit(_run(_serve(settings, with_envoy=envoy)))


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # a faster event loop where it exists (not on Windows)
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(settings: Settings, *, with_envoy: bool) -> int:
    from .process.supervisor import serve as run  # keeps `keys` commands free of server imports

    return await run(settings, with_envoy=with_envoy)


@app.command("envoy-config")
def envoy_config(
    grpc_port: Annotated[int | None, typer.Option(help="The backend's gRPC port.")] = None,
    http_port: Annotated[int | None, typer.Option(help="Envoy's HTTP port.")] = None,
    host: Annotated[str | None, typer.Option(help="Envoy's listen address.")] = None,
    backend_host: Annotated[
        str | None, typer.Option(help="Where Envoy reaches the gRPC backend.")
    ] = None,
    assets_dir: Annotated[
        Path | None,
        typer.Option(help="Where Envoy will find the descriptor set."),
    ] = None,
) -> None:
    """Print the Envoy config `serve` would use, e.g. for an Envoy in another container."""
    from .process.envoy_config import render_config

    settings = _settings(grpc_port=grpc_port, http_port=http_port, host=host)
    header = "# Generated by `typegpt-gateway envoy-config`: regenerate it, do not edit.\n"
    config = render_config(
        settings, grpc_port=settings.grpc_port, backend_host=backend_host, assets=assets_dir
    )
    typer.echo(header + config, nl=False)


@app.command()
def health(
    target: Annotated[str, typer.Option(help="gRPC address of the backend.")] = "127.0.0.1:50051",
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3.0,
) -> None:
    """Exit 0 when the backend's grpc.health.v1 service says SERVING (container healthcheck)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            # The stubs (types-grpcio-health-checking) leave out the methods HealthStub sets up.
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            typer.echo(f"unhealthy: {exc.code().name}", err=True)
            raise typer.Exit(1) from exc
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    typer.echo("serving" if serving else "not serving")
    raise typer.Exit(0 if serving else 1)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@contextlib.contextmanager
def _key_admin(db: Path | None) -> Iterator[KeyAdmin]:
    """The key admin core on the local store; its refusals become CLI errors."""
    settings = _settings(db=db)
    try:
        store = open_store(settings)
    except SchemaTooNewError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    try:
        yield KeyAdmin(store, settings.models)
    except GatewayError as error:
        if error.status == 400 and error.param is not None:
            hint = "--" + error.param.replace("_", "-")
            raise typer.BadParameter(error.message, param_hint=hint) from None
        typer.echo(f"error: {error.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()


LIMIT_OPTIONS = (
    "models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_usd", "budget_period",
)  # fmt: skip
# The words that lift a limit (None to the key admin core); for the counts, 'unlimited'.
_NO_LIMIT = {"models": ("all",), "expires_in": ("never",), "budget_period": ()}


def _given_limits(*values: str | None, expires_in: str | None) -> dict[str, object]:
    """The limits named on the command line (an option not given is left out), from the
    options in the order of LIMIT_OPTIONS, as the key admin core takes them; the core checks
    them."""
    given = dict(zip(LIMIT_OPTIONS, values, strict=True)) | {"expires_in": expires_in}
    limits: dict[str, object] = {}
    for field, value in given.items():
        if value is None:
            continue
        text = value.strip()
        if text.lower() in _NO_LIMIT.get(field, ("unlimited", "none")):
            limits[field] = None
        elif field == "models":
            limits[field] = text.split(",")
        elif field == "budget_usd":
            limits[field] = _dollars(text)
        else:
            limits[field] = int(text) if text.isdigit() else text
    return limits


def _dollars(text: str) -> object:
    """'25', '$0.50': a Decimal, exactly as written; other text goes to the core as it is,
    which refuses it with its message."""
    try:
        return Decimal(text.removeprefix("$"))
    except InvalidOperation:
        return text


def _budget(record: KeyRecord) -> str:
    """The key's budgets: '1000000/month', '$25/day', '1000000 and $25/day', or '-'."""
    budgets = []
    if record.budget_tokens is not None:
        budgets.append(str(record.budget_tokens))
    if record.budget_usd_micro is not None:
        budgets.append(f"${micro_to_usd(record.budget_usd_micro):,.6f}".rstrip("0").rstrip("."))
    return f"{' and '.join(budgets)}/{record.budget_period}" if budgets else "-"


def _unlimited(value: object) -> str:
    return "unlimited" if value is None else str(value)


def _describe(record: KeyRecord) -> str:
    budget = _budget(record)
    if budget == "-":
        budget = "unlimited"
    return (
        f"models={','.join(record.models or ()) or 'all'} rpm={_unlimited(record.rpm)} "
        f"tpm={_unlimited(record.tpm)} max-concurrent={_unlimited(record.max_concurrent)} "
        f"budget={budget} expires={_when(record.expires_at)}"
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the client, unique among live keys.")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use (default: all).")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 30d, 12h, 90m (default: never).")
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
    budget_tokens: BudgetOption = None,
    budget_usd: UsdOption = None,
    budget_period: PeriodOption = None,
    db: DbOption = None,
) -> None:
    """Create a key. It is printed once, alone on the last line, and never stored."""
    limits = _given_limits(
        models,
        rpm,
        tpm,
        max_concurrent,
        budget_tokens,
        budget_usd,
        budget_period,
        expires_in=expires_in,
    )
    with _key_admin(db) as admin:
        record, key = admin.create(name, limits)
    typer.echo(f"Created key {record.name!r}: {_describe(record)}")
    typer.echo("Copy it now; it cannot be shown again:")
    typer.echo(key)


@keys_app.command("update")
def keys_update(
    name: str,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use, or 'all'.")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="New lifetime from now (30d, 12h, 90m) or 'never'.")
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
    budget_tokens: BudgetOption = None,
    budget_usd: UsdOption = None,
    budget_period: PeriodOption = None,
    db: DbOption = None,
) -> None:
    """Change the limits of a live key in place (the key itself stays the same); a running
    gateway applies them within a second. Options not given are left as they are."""
    limits = _given_limits(
        models,
        rpm,
        tpm,
        max_concurrent,
        budget_tokens,
        budget_usd,
        budget_period,
        expires_in=expires_in,
    )
    with _key_admin(db) as admin:
        record = admin.update(name, limits)
    typer.echo(f"Updated key {record.name!r}: {_describe(record)}")


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """List keys: names, prefixes, limits and dates; never a key."""
    with _key_admin(db) as admin:
        records = admin.list()
    header = (
        "NAME", "PREFIX", "MODELS", "RPM", "TPM", "CONCURRENT", "BUDGET", "CREATED", "EXPIRES",
        "REVOKED",
    )  # fmt: skip
    rows = [
        (
            r.name,
            r.prefix + "…",
            ",".join(r.models) if r.models is not None else "all",
            str(r.rpm) if r.rpm is not None else "-",
            str(r.tpm) if r.tpm is not None else "-",
            str(r.max_concurrent) if r.max_concurrent is not None else "-",
            _budget(r),
            _when(r.created_at),
            _when(r.expires_at),
            _when(r.revoked_at),
        )
        for r in records
    ]
    _table(header, rows)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@keys_app.command("revoke")
def keys_revoke(name: str, db: DbOption = None) -> None:
    """Revoke the live key of that name; a running gateway refuses it within a second."""
    with _key_admin(db) as admin:
        admin.revoke(name)
    typer.echo(f"Revoked key {name!r}.")


@keys_app.command("backup")
def keys_backup(
    destination: Annotated[Path, typer.Argument(help="The copy to write (must not exist).")],
    db: DbOption = None,
) -> None:
    """Copy the key store consistently, even while the gateway runs (SQLite online backup)."""
    if destination.exists():
        typer.echo(f"error: {destination} exists; pick a new file", err=True)
        raise typer.Exit(1)
    with _key_admin(db) as admin:
        try:
            admin.store.backup(destination)
        except BackupUnsupportedError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"Backed up the key store to {destination}.")


def _since(text: str | None) -> dt.date | None:
    """A date (2026-05-01) or a lookback (7d, 2w) ending today (UTC)."""
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        pass
    try:
        days = parse_duration(text) // 86_400
    except ValueError as exc:
        raise typer.BadParameter(
            "a date (2026-05-01) or a lookback (7d)", param_hint="--since"
        ) from exc
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=max(days - 1, 0))


@keys_app.command("usage")
def keys_usage(
    name: str,
    since: Annotated[
        str | None,
        typer.Option(help="From this UTC day (2026-05-01) or lookback (7d = today and 6 before)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for scripts.")] = False,
    db: DbOption = None,
) -> None:
    """Requests, tokens, errors and cost of a key per UTC day and model (the running gateway
    writes them every couple of seconds and on shutdown). The cost of a model without a price
    is unknown; ESTIMATED counts requests whose usage the gateway estimated."""
    first_day = _since(since)
    with _key_admin(db) as admin:
        rows = admin.usage(name, first_day)
    if as_json:
        typer.echo(
            json.dumps(
                [{**dataclasses.asdict(row), "day": row.day.isoformat()} for row in rows],
                indent=2,
            )
        )
        return
    header = (
        "DAY", "MODEL", "REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "ERRORS", "COST",
        "ESTIMATED",
    )  # fmt: skip
    table = [
        (
            row.day.isoformat(),
            row.model,
            str(row.requests),
            str(row.prompt_tokens),
            str(row.completion_tokens),
            str(row.errors),
            _cost(row.cost_micro_usd, row.unpriced_requests, row.requests),
            str(row.estimated_requests),
        )
        for row in rows
    ]
    _table(header, table)


def _usd(micro_usd: int) -> str:
    """Exact dollars from micro-dollars, at least to the cent: $3.25, $0.000015."""
    whole, fraction = divmod(micro_usd, 1_000_000)
    cents = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"${whole:,}.{cents}"


def _cost(micro_usd: int, unpriced: int, requests: int) -> str:
    """A cost the ledger knows, and 'unknown' for the requests of models without a price:
    never counted as free."""
    if unpriced == 0:
        return _usd(micro_usd)
    if unpriced >= requests:
        return "unknown"
    return f"{_usd(micro_usd)} + unknown ({unpriced} unpriced)"


def main() -> None:
    app()
