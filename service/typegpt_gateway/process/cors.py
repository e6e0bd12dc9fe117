"""Browser access (CORS): off unless the operator names the origins allowed. Pure.

Envoy's CORS filter answers preflights and adds the response headers, but only for the
origins listed; for any other origin there is no CORS header, so browsers refuse to let the
page read the answer, and a preflight falls through to the gateway's 404.
"""

from __future__ import annotations

import json

# What the official JS SDK and axios send from a browser. `Authorization` must be named: the
# `*` wildcard never covers it.
ALLOW_HEADERS = "authorization, content-type, *"
ALLOW_METHODS = "GET, POST, OPTIONS"
EXPOSE_HEADERS = "retry-after, x-request-id"
PREFLIGHT_MAX_AGE_SECONDS = 600


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
