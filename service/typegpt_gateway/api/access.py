"""Which calls need a key, in gRPC terms (services) and in HTTP terms (paths). Pure.

Every call needs one except health, readiness, reflection and the console's files (a page
that holds no data: it asks the admin API, with the admin key, for everything it shows).
Envoy refuses a REST request without a well-formed key on its headers, the gRPC server
(callguard.py) a native call: both from this one list.
"""

from __future__ import annotations

from typing import Any

from google.api import annotations_pb2
from google.protobuf.descriptor import MethodDescriptor

from typegpt.gateway.v1 import chat_pb2, console_pb2, keys_pb2, routes_pb2, status_pb2

CLIENT_KEY_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
ROUTE_SERVICE = routes_pb2.DESCRIPTOR.services_by_name["RouteService"].full_name
# The services whose calls need a client key.
CLIENT_KEY_SERVICES = frozenset({CLIENT_KEY_SERVICE, ROUTE_SERVICE})
ADMIN_KEY_SERVICE = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
CONSOLE_SERVICE = console_pb2.DESCRIPTOR.services_by_name["ConsoleService"]
# The services whose every call needs a key (a client key, or the admin key).
KEY_SERVICES = CLIENT_KEY_SERVICES | {ADMIN_KEY_SERVICE}


def _http_path(method: MethodDescriptor) -> str | None:
    # googleapis-common-protos types the extension for its own descriptors only.
    options: Any = method.GetOptions()
    rule = options.Extensions[annotations_pb2.http]
    pattern = rule.WhichOneof("pattern")
    return None if pattern is None else str(getattr(rule, pattern))


def keyless_paths() -> list[str]:
    """The HTTP paths of the gateway's services that need no key, from their google.api.http
    bindings: /healthz and /readyz."""
    paths = []
    for proto in (chat_pb2, routes_pb2, keys_pb2, status_pb2):
        for service in proto.DESCRIPTOR.services_by_name.values():
            if service.full_name in KEY_SERVICES:
                continue
            for method in service.methods:
                path = _http_path(method)
                if path is None:
                    continue
                # Envoy matches these exactly.
                if "{" in path:
                    raise ValueError(f"{method.full_name}: a keyless path must be literal: {path}")
                paths.append(path)
    return paths


def console_prefix() -> str:
    """The folder the console's files are served under, from ConsoleService's binding
    (`/admin/{path=**}`): `/admin/`. Envoy gives it a route of its own (envoy_config)."""
    (method,) = CONSOLE_SERVICE.methods
    path = _http_path(method)
    prefix, brace, variable = (path or "").partition("{")
    if not brace or not prefix.endswith("/") or not variable.endswith("=**}"):
        raise ValueError(f"{method.full_name}: expected a binding of the form /folder/{{x=**}}")
    return prefix
