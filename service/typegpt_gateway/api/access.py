"""Which calls need a key, in gRPC terms (services) and in HTTP terms (paths). Pure.

Every call needs one except health, readiness and reflection. Envoy refuses a REST request
without a well-formed key on its headers, the gRPC server (callguard.py) a native call: both
from this one list.
"""

from __future__ import annotations

from google.api import annotations_pb2

from typegpt.gateway.v1 import chat_pb2, keys_pb2, status_pb2

CLIENT_KEY_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
ADMIN_KEY_SERVICE = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
# The services whose every call needs a key (a client key, or the admin key).
KEY_SERVICES = frozenset({CLIENT_KEY_SERVICE, ADMIN_KEY_SERVICE})


def keyless_paths() -> list[str]:
    """The HTTP paths of the gateway's services that need no key, from their google.api.http
    bindings: /healthz and /readyz."""
    paths = []
    for proto in (chat_pb2, keys_pb2, status_pb2):
        for service in proto.DESCRIPTOR.services_by_name.values():
            if service.full_name in KEY_SERVICES:
                continue
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                pattern = rule.WhichOneof("pattern")
                if pattern is None:
                    continue
                path = getattr(rule, pattern)
                # Envoy matches these exactly.
                if "{" in path:
                    raise ValueError(f"{method.full_name}: a keyless path must be literal: {path}")
                paths.append(path)
    return paths
