"""Pinned, hashed dependencies and the CI audit.

The lock must cover pyproject.toml (a dependency added there without regenerating the lock
fails here), and .ci/audit.py must fail on a vulnerability with a fix, warn on one without,
and say plainly when it could not audit at all. The audit runs the real pip-audit against a
vulnerability service played by a local HTTP server in OSV's format.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gateway_process import free_port
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
AUDIT = ROOT / ".ci" / "audit.py"
REGENERATE = (
    "pip-compile --generate-hashes --extra test --build-deps-for editable --allow-unsafe "
    "--strip-extras --no-emit-index-url --no-emit-find-links --output-file requirements.lock "
    "pyproject.toml"
)
# CI's fresh Debian 12 machine runs Python 3.11.2: some packages need more there (redis needs
# async-timeout below 3.11.3), so a lock compiled on a later Python could not install.
DEBIAN_12_PYTHON = {"python_version": "3.11", "python_full_version": "3.11.2"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def locked() -> dict[str, Version]:
    return {
        canonicalize_name(name): Version(version)
        for name, version in _PIN.findall(LOCK.read_text())
    }


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    texts = [
        *project["project"]["dependencies"],
        *(text for group in project["project"]["optional-dependencies"].values() for text in group),
        *project["build-system"]["requires"],
    ]
    return [Requirement(text) for text in texts]


def test_lock_pins_every_declared_dependency_within_its_range() -> None:
    pins = locked()
    stale = [
        str(req)
        for req in declared()
        if canonicalize_name(req.name) not in pins
        or not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)
    ]
    assert stale == [], f"requirements.lock is stale for {stale}; regenerate it: {REGENERATE}"


def test_lock_holds_what_every_pin_needs_on_debian_12s_python() -> None:
    pins = locked()
    missing = []
    for name in pins:
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a build-only pin, not installed here
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            needed = marker is None or marker.evaluate({**DEBIAN_12_PYTHON, "extra": ""})
            if needed and canonicalize_name(requirement.name) not in pins:
                missing.append(f"{name} needs {requirement}")
    assert missing == [], f"regenerate requirements.lock with Python 3.11.2: {missing}"


STUBS = ROOT / "service" / "typegpt" / "gateway" / "v1"


def _stub_calls(path: Path, function: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == function
    ]


def stub_requirements() -> dict[str, Version]:
    """The oldest protobuf and grpcio the generated stubs import with, read from the checks
    they run at import: protobuf's runtime version check in each *_pb2.py and
    GRPC_GENERATED_VERSION in each *_pb2_grpc.py."""
    needs: dict[str, list[Version]] = {"protobuf": [], "grpcio": []}
    for path in sorted(STUBS.glob("*_pb2.py")):
        (call,) = _stub_calls(path, "ValidateProtobufRuntimeVersion")
        # (domain, major, minor, patch, suffix, file)
        major, minor, patch, suffix = (ast.literal_eval(arg) for arg in call.args[1:5])
        needs["protobuf"].append(Version(f"{major}.{minor}.{patch}{suffix}"))
    for path in sorted(STUBS.glob("*_pb2_grpc.py")):
        (value,) = [
            node.value
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets]
            == ["GRPC_GENERATED_VERSION"]
        ]
        needs["grpcio"].append(Version(ast.literal_eval(value)))
    assert all(needs.values()), f"no generated stubs found in {STUBS}"
    return {name: max(versions) for name, versions in needs.items()}


def floor(specifier: SpecifierSet) -> Version | None:
    """The lowest version a specifier admits, as far as its clauses bound it from below."""
    bounds = [Version(s.version) for s in specifier if s.operator in (">=", ">", "==", "~=")]
    return max(bounds, default=None)


def test_declared_floors_admit_nothing_the_generated_stubs_refuse() -> None:
    requirements = {canonicalize_name(req.name): req for req in declared()}
    for name, needed in stub_requirements().items():
        specifier = requirements[name].specifier
        lowest = floor(specifier)
        assert lowest is not None and lowest >= needed, (
            f"pyproject.toml allows {name}{specifier}, but the generated stubs need "
            f"{name}>={needed}: an install within the range fails at import"
        )
        assert locked()[name] >= needed


def test_every_pin_carries_hashes() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 1)[1])
    pinned = [block for block in blocks if _PIN.match(block)]
    assert len(pinned) == len(locked()) > 20
    for block in pinned:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_regeneration_command_is_the_documented_one() -> None:
    header = "\n".join(line for line in LOCK.read_text().splitlines()[:10] if line.startswith("#"))
    assert set(re.findall(r"--[a-z-]+", header)) == set(re.findall(r"--[a-z-]+", REGENERATE))
    assert REGENERATE in (ROOT / "README.md").read_text()


def test_readme_installs_from_the_lock_and_ci_audits() -> None:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("<!-- test-command -->", 1)[1].split("```", 2)[1]
    assert "pip install --require-hashes -r requirements.lock" in command
    assert "pip install --no-deps --no-build-isolation -e ." in command
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".ci/audit.py" in ci


# --- the audit ---------------------------------------------------------------------------------


class FakeOsv:
    """OSV's query API on 127.0.0.1: `vulns` maps a package name to the entries it reports."""

    def __init__(self) -> None:
        self.vulns: dict[str, list[dict]] = {}
        self.queries: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                query = json.loads(self.rfile.read(int(self.headers["content-length"])))
                owner.queries.append(query)
                body = json.dumps({"vulns": owner.vulns.get(query["package"]["name"], [])})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def osv() -> Iterator[FakeOsv]:
    fake = FakeOsv()
    yield fake
    fake.server.shutdown()


def _vuln(package: str, fixed: str | None) -> dict:
    ranges = [
        {
            "type": "ECOSYSTEM",
            "events": [{"introduced": "0"}] + ([{"fixed": fixed}] if fixed else []),
        }
    ]
    return {
        "id": f"GHSA-test-{package}",
        "summary": "a test vulnerability",
        "affected": [{"package": {"name": package, "ecosystem": "PyPI"}, "ranges": ranges}],
    }


def _audit(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(AUDIT), "--service", "osv", "--osv-url", url],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **env},
    )


def test_audit_fails_on_a_vulnerability_with_a_fix(osv) -> None:
    version = locked()["httpx"]
    osv.vulns["httpx"] = [_vuln("httpx", "999.0")]
    result = _audit(osv.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"VULNERABLE: httpx=={version}: GHSA-test-httpx (fixed in 999.0)" in result.stdout
    # Every pinned package was asked about, not just the top-level ones.
    assert {q["package"]["name"] for q in osv.queries} == set(locked())


def test_audit_warns_but_passes_on_a_vulnerability_without_a_fix(osv) -> None:
    osv.vulns["orjson"] = [_vuln("orjson", None)]
    result = _audit(osv.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: orjson==" in result.stdout and "no fix released yet" in result.stdout
    assert f"{len(locked())} pinned packages checked with osv" in result.stdout


def test_audit_says_so_when_no_service_answers() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1/query"
    result = _audit(nowhere)
    assert result.returncode == 0
    assert "NOT AUDITED" in result.stderr
    required = _audit(nowhere, AUDIT_REQUIRED="1")
    assert required.returncode == 2 and "NOT AUDITED" in required.stderr
