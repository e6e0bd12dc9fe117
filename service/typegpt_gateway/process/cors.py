"""Browser access (CORS): off unless the operator names the origins allowed. Pure.

Envoy's CORS filter answers preflights and adds the response headers, but only for the
origins listed; for any other origin there is no CORS header, so browsers refuse to let the
page read the answer, and a preflight falls through to the gateway's 404.
"""

from __future__ import annotations

import json
import re

# What the official JS SDK and axios send from a browser. `Authorization` must be named: the
# `*` wildcard never covers it.
ALLOW_HEADERS = "authorization, content-type, *"
ALLOW_METHODS = "GET, POST, OPTIONS"
EXPOSE_HEADERS = "retry-after, x-request-id"
PREFLIGHT_MAX_AGE_SECONDS = 600

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9\-\.\[\]:]+$")


def parse_origins(value: str) -> tuple[str, ...]:
    """Comma-separated origins such as `https://app.example.com,http://localhost:3000`."""
    origins = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ValueError(
                f"not an origin: {origin!r} (expected scheme://host[:port], e.g. "
                "https://app.example.com)"
            )
    return origins


def envoy_config(origins: tuple[str, ...]) -> tuple[str, str]:
    """The HTTP filter line and the virtual host's per-filter policy line, both empty when CORS
    is off. One-line JSON flow maps, which are YAML, so that they drop into the template."""
    if not origins:
        return "", ""
    cors_filter = {
        "name": "envoy.filters.http.cors",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
    }
    policy = {
        "envoy.filters.http.cors": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": origin} for origin in origins],
            "allow_methods": ALLOW_METHODS,
            "allow_headers": ALLOW_HEADERS,
            "expose_headers": EXPOSE_HEADERS,
            "max_age": str(PREFLIGHT_MAX_AGE_SECONDS),
        }
    }
    return f"- {json.dumps(cors_filter)}", f"typed_per_filter_config: {json.dumps(policy)}"
