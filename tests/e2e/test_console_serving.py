"""The console's files through the real Envoy and backend: no key needed, the security headers
on every answer under /admin/ (errors included), and nothing outside the console's list."""

from __future__ import annotations

import httpx
import pytest
from openai_shape import assert_error

from typegpt_gateway.api.console_service import FILES
from typegpt_gateway.process.envoy_config import CONSOLE_HEADERS


def assert_console_headers(response: httpx.Response) -> None:
    for name, value in CONSOLE_HEADERS.items():
        assert response.headers.get(name) == value, name
    # Only the policy's own copy: no second, looser one from anywhere else.
    assert len(response.headers.get_list("content-security-policy")) == 1


@pytest.mark.parametrize("path", sorted(FILES))
def test_each_file_is_served_without_a_key_with_its_type_and_headers(gateway, path):
    response = httpx.get(f"{gateway.url}/admin/{path}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] in (
        "text/html",
        "text/css",
        "text/javascript",
    )
    assert response.content
    assert_console_headers(response)


def test_the_folder_without_its_slash_redirects_to_it(gateway):
    response = httpx.get(f"{gateway.url}/admin", timeout=30)
    assert response.status_code == 301
    assert response.headers["location"].endswith("/admin/")


@pytest.mark.parametrize(
    "path",
    [
        "/admin/nope.js",
        "/admin/vendor/",
        "/admin/vendor/chart.umd.min.js.map",
        "/admin/%2e%2e%2fapi%2fconsole_service.py",
        "/admin/..%2f..%2fsettings.py",
    ],
)
def test_anything_else_under_admin_is_a_404_with_the_headers(gateway, path):
    response = httpx.get(f"{gateway.url}{path}", timeout=30)
    assert response.status_code in (400, 404), response.text
    assert_console_headers(response)
    if response.status_code == 404:
        assert_error(response, 404, "invalid_request_error")


def test_a_path_that_climbs_out_is_resolved_before_routing_and_needs_a_key(gateway):
    # Envoy normalizes the path first: this is /v1/models, with no key.
    response = httpx.get(f"{gateway.url}/admin/../v1/models", timeout=30)
    assert response.status_code == 401
    assert "content-security-policy" not in response.headers


def test_a_nul_in_the_path_is_refused_before_any_route(gateway):
    # Envoy's codec refuses it, before routing: the answer is JSON, no page.
    response = httpx.get(f"{gateway.url}/admin/app.js%00.png", timeout=30)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"


def test_writes_are_not_served(gateway):
    response = httpx.post(f"{gateway.url}/admin/index.html", content=b"x", timeout=30)
    assert response.status_code in (404, 405)
