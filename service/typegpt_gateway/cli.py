"""The `typegpt-gateway` command."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .keys import parse_duration
from .settings import Settings
from .store import KeyExistsError, KeyNotFoundError, KeyStore

app = typer.Typer(help="OpenAI-compatible gateway in front of TypeGPT.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage client API keys (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DbOption = Annotated[
    Path | None, typer.Option("--db", help="SQLite key store (default: $GATEWAY_DB).")
]


def _settings(**overrides: object) -> Settings:
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
    envoy: Annotated[
        bool,
        typer.Option(
            "--envoy/--no-envoy",
            help="Run the Envoy sidecar here; --no-envoy serves gRPC only, for an Envoy run "
            "elsewhere (docker compose).",
        ),
    ] = True,
) -> None:
    """Run the gateway: the gRPC server and the Envoy sidecar on the HTTP port."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every upstream request at INFO: noise, and a place secrets could leak into.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = _settings(
        http_port=http_port, grpc_port=grpc_port, host=host, grpc_host=grpc_host, db=db
    )
    sys.exit(asyncio.run(_serve(settings, with_envoy=envoy)))


async def _serve(settings: Settings, *, with_envoy: bool) -> int:
    from .serve import serve as run  # keeps `keys` commands free of server imports

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
        typer.Option(help="Where Envoy will find the Lua filter and descriptor set."),
    ] = None,
) -> None:
    """Print the Envoy config `serve` would use, e.g. for an Envoy in another container."""
    from .envoy import render_config

    settings = _settings(grpc_port=grpc_port, http_port=http_port, host=host)
    typer.echo(
        render_config(
            settings, grpc_port=settings.grpc_port, backend_host=backend_host, assets=assets_dir
        ),
        nl=False,
    )


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
            reply = health_pb2_grpc.HealthStub(channel).Check(
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


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the client, unique among live keys.")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use (default: all).")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 30d, 12h, 90m (default: never).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute allowed.", min=1)] = None,
    db: DbOption = None,
) -> None:
    """Create a key. It is printed once, alone on the last line, and never stored."""
    settings = _settings(db=db)
    model_list = None
    if models is not None:
        model_list = [model.strip() for model in models.split(",") if model.strip()]
        unknown = sorted(set(model_list) - set(settings.models))
        if unknown:
            raise typer.BadParameter(
                f"not in the catalog: {', '.join(unknown)}", param_hint="--models"
            )
    try:
        lifetime = parse_duration(expires_in) if expires_in is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires-in") from exc
    store = KeyStore(settings.db)
    try:
        record, key = store.create(name, models=model_list, rpm=rpm, expires_in=lifetime)
    except KeyExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    typer.echo(
        f"Created key {record.name!r}: models={','.join(record.models or ()) or 'all'} "
        f"rpm={record.rpm or 'unlimited'} expires={_when(record.expires_at)}"
    )
    typer.echo("Copy it now; it cannot be shown again:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """List keys: names, prefixes, limits and dates; never a key."""
    store = KeyStore(_settings(db=db).db)
    try:
        records = store.records()
    finally:
        store.close()
    header = ("NAME", "PREFIX", "MODELS", "RPM", "CREATED", "EXPIRES", "REVOKED")
    rows = [
        (
            r.name,
            r.prefix + "…",
            ",".join(r.models) if r.models is not None else "all",
            str(r.rpm) if r.rpm is not None else "-",
            _when(r.created_at),
            _when(r.expires_at),
            _when(r.revoked_at),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@keys_app.command("revoke")
def keys_revoke(name: str, db: DbOption = None) -> None:
    """Revoke the live key of that name; a running gateway refuses it within a second."""
    store = KeyStore(_settings(db=db).db)
    try:
        store.revoke(name)
    except KeyNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    typer.echo(f"Revoked key {name!r}.")


def main() -> None:
    app()
