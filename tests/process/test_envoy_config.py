"""Envoy's config as rendered, read back as YAML: no Envoy runs. What the rendered config does
when Envoy runs it is tested end to end (tests/e2e/test_edge.py)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from typegpt_gateway.errors import default_error_type
from typegpt_gateway.keystore.records import missing_key_error
from typegpt_gateway.process.envoy_config import (
    ERROR_STATUSES,
    LUA_ERROR_TYPES_MARKER,
    LUA_FILTER,
    assets_dir,
    lua_source,
    render_config,
)
from typegpt_gateway.settings import Settings


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_rendered_admin_address_is_loopback_whatever_the_http_host(host) -> None:
    config = yaml.safe_load(render_config(Settings(host=host, envoy_admin_port=9901), grpc_port=1))
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9901,
    }
    assert (
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == host
    )


def test_rendered_routes_need_a_key_but_health() -> None:
    config = yaml.safe_load(render_config(Settings(), grpc_port=1))
    (host,) = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"]
    refusals = {
        json.dumps(route["match"]): route.get("metadata", {})
        .get("filter_metadata", {})
        .get("envoy.filters.http.lua", {})
        .get("missing_key")
        for route in host["routes"]
    }
    assert refusals == {
        '{"path": "/healthz"}': None,
        '{"path": "/readyz"}': None,
        # The console's page holds no data: it asks the admin API, with the admin key.
        '{"path": "/admin"}': None,
        '{"prefix": "/admin/"}': None,
        # The backend answers a missing admin key: only it knows whether the admin API is on.
        '{"prefix": "/v1/admin/"}': None,
        '{"prefix": "/"}': {"status": "401", "body": missing_key_error().to_json()},
    }


@pytest.mark.parametrize("workers", [(), (1, 2)])
def test_rendered_console_route_keeps_its_security_headers_through_the_transcoder(workers) -> None:
    ports = {"worker_ports": workers} if workers else {"grpc_port": 1}
    config = yaml.safe_load(render_config(Settings(), **ports))
    routes = _routes(config["static_resources"]["listeners"][0])
    (console,) = [route for route in routes if route["match"] == {"prefix": "/admin/"}]
    headers = {
        entry["header"]["key"]: entry["header"]["value"]
        for entry in console["response_headers_to_add"]
    }
    policy = dict(
        directive.split(" ", 1) for directive in headers["content-security-policy"].split("; ")
    )
    assert policy == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "connect-src": "'self'",
        "img-src": "'self' data:",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    # Without it the transcoder would pick the catch-all route again, without these headers.
    transcoder = console["typed_per_filter_config"]["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["match_incoming_request_route"] is True
    assert transcoder["services"] == ["typegpt.gateway.v1.ConsoleService"]
    # Before the catch-all, which needs a key.
    assert routes.index(console) < routes.index(
        next(route for route in routes if route["match"] == {"prefix": "/"})
    )


def _lua_filter_source(config: dict) -> str:
    (lua,) = [
        http_filter["typed_config"]
        for http_filter in config["static_resources"]["listeners"][0]["filter_chains"][0][
            "filters"
        ][0]["typed_config"]["http_filters"]
        if http_filter["name"] == "envoy.filters.http.lua"
    ]
    return lua["default_source_code"]["inline_string"]


def test_rendered_lua_filter_types_every_status_as_the_backend_does() -> None:
    source = _lua_filter_source(yaml.safe_load(render_config(Settings(), grpc_port=1)))
    (table,) = re.findall(r"^local ERROR_TYPES = (\{.*?^\})$", source, re.MULTILINE | re.DOTALL)
    entries = re.findall(r'\[(\d+)\]\s*=\s*"([a-z_]+)"', table)
    # No entry twice, and nothing else in the table.
    assert len(entries) == len(dict(entries)) == table.count("=")
    assert {int(status): error_type for status, error_type in entries} == {
        status: default_error_type(status) for status in ERROR_STATUSES
    }
    # The rest is the Lua file as checked in, kept whole through the YAML.
    lua_file = (assets_dir() / LUA_FILTER).read_text()
    assert source.replace(table, "{" + LUA_ERROR_TYPES_MARKER + "}") == lua_file
    assert source == lua_source()


def _routes(listener: dict) -> list[dict]:
    (host,) = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ]
    return host["routes"]


def test_one_backend_has_one_listener_and_no_balancing() -> None:
    config = yaml.safe_load(render_config(Settings(), grpc_port=1))
    resources = config["static_resources"]
    assert [listener["name"] for listener in resources["listeners"]] == ["http"]
    (cluster,) = resources["clusters"]
    assert "lb_policy" not in cluster and "health_checks" not in cluster
    assert all(
        "hash_policy" not in route.get("route", {}) for route in _routes(resources["listeners"][0])
    )


def test_workers_are_one_cluster_pinned_by_key_on_both_listeners() -> None:
    settings = Settings(grpc_host="127.0.0.1", grpc_port=50051, grpc_max_concurrent_streams=7)
    config = yaml.safe_load(render_config(settings, worker_ports=[4001, 4002]))
    resources = config["static_resources"]
    (cluster,) = resources["clusters"]
    assert cluster["lb_policy"] == "RING_HASH"
    (check,) = cluster["health_checks"]
    # Alive and not draining, not readiness: one worker's doubt must not move its keys.
    assert check["grpc_health_check"] == {"service_name": "typegpt.gateway.worker"}
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [
        4001,
        4002,
    ]
    http, grpc_listener = resources["listeners"]
    assert grpc_listener["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 50051,
    }
    manager = grpc_listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["http2_protocol_options"]["max_concurrent_streams"] == 7
    # No transcoder, no Lua on the direct gRPC port: the router alone.
    assert [f["name"] for f in manager["http_filters"]] == ["envoy.filters.http.router"]
    # Every route to the backend (a redirect, /admin to /admin/, goes nowhere).
    for route in [r for r in _routes(http) + _routes(grpc_listener) if "route" in r]:
        assert route["route"]["hash_policy"] == [{"header": {"header_name": "authorization"}}]
        # Only what no worker has seen is sent again.
        assert route["route"]["retry_policy"]["retry_on"] == "connect-failure"


def test_either_one_backend_or_workers() -> None:
    with pytest.raises(ValueError):
        render_config(Settings())
    with pytest.raises(ValueError):
        render_config(Settings(), grpc_port=1, worker_ports=[2, 3])
