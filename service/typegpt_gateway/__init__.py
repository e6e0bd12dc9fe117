"""typegpt-gateway: an OpenAI-compatible gateway in front of TypeGPT."""

import os

# Before anything imports grpc, which reads it once. The gateway forks only to exec Envoy, so
# gRPC's fork handlers have nothing to do; left on, they print a plain-text line on stderr
# under uvloop, where every line is JSON.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
