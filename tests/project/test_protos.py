"""The committed stubs and descriptor set are what the protos generate; buf lint is clean."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A build tool beside the protos, not part of the installed package.
_spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
assert _spec is not None and _spec.loader is not None
protogen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protogen)
BUF = REPO / "tests" / "js" / "node_modules" / ".bin" / "buf"


def test_generated_code_is_fresh(tmp_path):
    protogen.generate(stubs_root=tmp_path / "stubs", descriptor=tmp_path / "gateway.pb")
    generated = sorted(
        p.relative_to(tmp_path / "stubs") for p in (tmp_path / "stubs").rglob("*.py*")
    )
    assert generated, "protoc produced nothing"
    for relative in generated:
        committed = protogen.STUBS_ROOT / relative
        assert committed.read_bytes() == (tmp_path / "stubs" / relative).read_bytes(), (
            f"{committed} is stale: run `python protos/generate.py`"
        )
    assert protogen.DESCRIPTOR.read_bytes() == (tmp_path / "gateway.pb").read_bytes(), (
        "envoy/gateway.pb is stale: run `python protos/generate.py`"
    )


def test_buf_lint_is_clean():
    buf = str(BUF) if BUF.exists() else shutil.which("buf")
    if buf is None:
        pytest.skip("buf not installed: run `npm ci --prefix tests/js`")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
