"""Regenerates the Python stubs and Envoy's descriptor set from `protos/`.

Run `python protos/generate.py` from a source checkout after editing a .proto; the
outputs are committed, and tests/project/test_protos.py fails when they are stale.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = (
    "typegpt/gateway/v1/chat.proto",
    "typegpt/gateway/v1/console.proto",
    "typegpt/gateway/v1/keys.proto",
    "typegpt/gateway/v1/routes.proto",
    "typegpt/gateway/v1/status.proto",
)
STUBS_ROOT = REPO_ROOT / "service"
DESCRIPTOR = REPO_ROOT / "envoy" / "gateway.pb"


def generate(stubs_root: Path = STUBS_ROOT, descriptor: Path = DESCRIPTOR) -> None:
    """Writes `<stubs_root>/typegpt/gateway/v1/*_pb2*.py[i]` and the descriptor set."""
    from grpc_tools import protoc  # build-time only: not needed to run the gateway

    well_known = str(resources.files("grpc_tools") / "_proto")
    includes = [f"-I{PROTO_ROOT}", f"-I{well_known}"]
    stubs_root.mkdir(parents=True, exist_ok=True)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    runs = [
        [
            f"--python_out={stubs_root}",
            f"--pyi_out={stubs_root}",
            f"--grpc_python_out={stubs_root}",
        ],
        ["--include_imports", "--include_source_info", f"--descriptor_set_out={descriptor}"],
    ]
    for outputs in runs:
        code = protoc.main(["protoc", *includes, *outputs, *PROTO_FILES])
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    if not PROTO_ROOT.is_dir():
        sys.exit("generate.py runs from a source checkout: protos/ not found")
    generate()
