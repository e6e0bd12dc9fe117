"""typegpt-gateway: an OpenAI-compatible gateway in front of TypeGPT."""

import os

# Before grpc is imported: the gateway never runs gRPC in a forked child, and with fork
# support on, grpc prints a plain-text line into the JSON log whenever Envoy is spawned.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
