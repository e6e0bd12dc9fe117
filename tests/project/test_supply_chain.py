"""Pinned, hashed dependencies and the CI audit.

Two locks: requirements.lock, what runs the gateway (the image and the quick start install it),
and requirements-dev.lock, the same pins plus the test tools. Each must cover pyproject.toml (a
dependency added there without regenerating the locks fails here), the test tools must stay
out of the runtime lock, and .ci/audit.py must audit both, fail on a vulnerability with a fix,
warn on one without, and say plainly when it could not audit at all. The audit runs the real
pip-audit against a vulnerability service played by a local HTTP server in OSV's format.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
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
DEV_LOCK = ROOT / "requirements-dev.lock"
LOCKS = (LOCK, DEV_LOCK)
AUDIT = ROOT / ".ci" / "audit.py"
_COMPILE = (
    "pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url "
    "--no-emit-find-links"
)
# The dev lock is compiled with the runtime lock as a constraint: the tests run the very pins
# the gateway runs with.
REGENERATE = {
    LOCK: f"{_COMPILE} --build-deps-for wheel --output-file requirements.lock pyproject.toml",
    DEV_LOCK: (
        f"{_COMPILE} --extra test --build-deps-for editable --constraint requirements.lock "
        "--output-file requirements-dev.lock pyproject.toml"
    ),
}
# pip-compile's options that take a value.
_VALUED = {"--build-deps-for", "--extra", "--constraint", "--output-file"}
# CI's fresh Debian 12 machine runs Python 3.11.2: some packages need more there (redis needs
# async-timeout below 3.11.3), so a lock compiled on a later Python could not install.
DEBIAN_12_PYTHON = {"python_version": "3.11", "python_full_version": "3.11.2"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def locked(lock: Path = LOCK) -> dict[str, Version]:
    return {
        canonicalize_name(name): Version(version)
        for name, version in _PIN.findall(lock.read_text())
    }


def every_pin() -> dict[str, Version]:
    return {name: version for lock in LOCKS for name, version in locked(lock).items()}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_declared() -> list[Requirement]:
    """What installing the gateway needs: its dependencies and its build backend."""
    project = _project()
    texts = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    return [Requirement(text) for text in texts]


def declared_test_extra() -> list[Requirement]:
    return [Requirement(text) for text in _project()["project"]["optional-dependencies"]["test"]]


def _regenerate() -> str:
    return " && ".join(REGENERATE.values())


@pytest.mark.parametrize(
    ("lock", "needed"),
    [(LOCK, runtime_declared), (DEV_LOCK, lambda: runtime_declared() + declared_test_extra())],
    ids=["runtime", "dev"],
)
def test_lock_pins_every_declared_dependency_within_its_range(lock, needed) -> None:
    pins = locked(lock)
    stale = [
        str(req)
        for req in needed()
        if canonicalize_name(req.name) not in pins
        or not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)
    ]
    assert stale == [], f"{lock.name} is stale for {stale}; regenerate the locks: {_regenerate()}"


def test_the_runtime_lock_holds_no_test_tool() -> None:
    runtime = {canonicalize_name(req.name) for req in runtime_declared()}
    tools = {canonicalize_name(req.name) for req in declared_test_extra()} - runtime
    assert sorted(tools & set(locked(LOCK))) == [], "test tools in requirements.lock"


def test_the_dev_lock_holds_the_runtime_pins_at_the_same_versions() -> None:
    dev = locked(DEV_LOCK)
    differ = {
        name: (str(version), str(dev.get(name)))
        for name, version in locked(LOCK).items()
        if dev.get(name) != version
    }
    assert differ == {}, f"(runtime, dev) pins differ; regenerate the locks: {_regenerate()}"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda lock: lock.name)
def test_lock_holds_what_every_pin_needs_on_debian_12s_python(lock) -> None:
    pins = locked(lock)
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
    assert missing == [], f"regenerate {lock.name} with Python 3.11.2: {missing}"


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
    requirements = {canonicalize_name(req.name): req for req in runtime_declared()}
    for name, needed in stub_requirements().items():
        specifier = requirements[name].specifier
        lowest = floor(specifier)
        assert lowest is not None and lowest >= needed, (
            f"pyproject.toml allows {name}{specifier}, but the generated stubs need "
            f"{name}>={needed}: an install within the range fails at import"
        )
        assert locked()[name] >= needed


SERVICE = ROOT / "service"
FIRST_PARTY = {"typegpt", "typegpt_gateway"}


def runtime_imports() -> dict[str, str]:
    """Every module the gateway's code (generated stubs included) imports from outside the
    standard library and itself, with the first file that does: imports inside functions and
    under TYPE_CHECKING count too. `from package import name` counts as `package.name` when
    that is a module of its own (`google.api.annotations_pb2`, not the `google` namespace)."""
    found: dict[str, str] = {}
    for path in sorted(SERVICE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [f"{node.module}.{alias.name}" for alias in node.names]
                modules = [m if _is_module(m) else node.module for m in modules]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(module, str(path.relative_to(ROOT)))
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent is not a package: `name` is an attribute
        return False


def _file_owners() -> dict[Path, str]:
    """Each installed file, and the distribution that installed it."""
    owners = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            owners[Path(dist.locate_file(file)).resolve()] = canonicalize_name(dist.name)
    return owners


def test_every_module_the_gateway_imports_comes_from_a_declared_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {canonicalize_name(Requirement(text).name) for text in project["dependencies"]}
    owners = _file_owners()
    undeclared = []
    for module, where in runtime_imports().items():
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, f"{where} imports {module}: missing"
        owner = owners.get(Path(spec.origin).resolve())
        if owner not in runtime:
            undeclared.append(f"{where} imports {module} (from {owner or 'no distribution'})")
    # A dependency's own dependencies, or the test extra, may change or go: declare it.
    assert undeclared == [], f"not in pyproject.toml's [project] dependencies: {undeclared}"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda lock: lock.name)
def test_every_pin_carries_hashes(lock) -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 1)[1])
    pinned = [block for block in blocks if _PIN.match(block)]
    assert len(pinned) == len(locked(lock)) > 20
    for block in pinned:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def _options(command: str) -> set[str]:
    """A pip-compile command's options, `--name` or `--name=value`, however it was written."""
    words = command.replace("=", " ").split()
    return {
        f"{word}={words[i + 1]}" if word in _VALUED else word
        for i, word in enumerate(words)
        if word.startswith("--")
    }


@pytest.mark.parametrize("lock", LOCKS, ids=lambda lock: lock.name)
def test_regeneration_command_is_the_documented_one(lock) -> None:
    header = [line for line in lock.read_text().splitlines()[:10] if line.startswith("#    ")]
    assert len(header) == 1 and "pip-compile" in header[0], header
    assert _options(header[0]) == _options(REGENERATE[lock])
    assert REGENERATE[lock] in (ROOT / "README.md").read_text()


def _fenced_after(text: str, marker: str) -> str:
    return text.split(marker, 1)[1].split("```", 2)[1]


def test_readme_installs_the_runtime_lock_to_run_and_the_dev_lock_to_test() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = _fenced_after(readme, "## Quick start")
    assert "pip install --require-hashes -r requirements.lock && " in quick_start
    assert "pip install --no-deps --no-build-isolation . " in quick_start
    assert "requirements-dev.lock" not in quick_start
    command = _fenced_after(readme, "<!-- test-command -->")
    assert "pip install --require-hashes -r requirements-dev.lock && " in command
    assert "pip install --no-deps --no-build-isolation -e . " in command
    assert "requirements.lock" not in command.replace("requirements-dev.lock", "")
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
    version = locked(DEV_LOCK)["pytest"]
    osv.vulns["pytest"] = [_vuln("pytest", "999.0")]
    result = _audit(osv.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"VULNERABLE: pytest=={version}: GHSA-test-pytest (fixed in 999.0)" in result.stdout
    # Every pinned package of both locks was asked about, not just the top-level ones.
    assert {q["package"]["name"] for q in osv.queries} == set(every_pin())


def test_audit_warns_but_passes_on_a_vulnerability_without_a_fix(osv) -> None:
    osv.vulns["orjson"] = [_vuln("orjson", None)]
    result = _audit(osv.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: orjson==" in result.stdout and "no fix released yet" in result.stdout
    checked = f"{len(every_pin())} pinned packages of requirements.lock, requirements-dev.lock"
    assert f"{checked} checked with osv" in result.stdout


def test_audit_says_so_when_no_service_answers() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1/query"
    result = _audit(nowhere)
    assert result.returncode == 0
    assert "NOT AUDITED" in result.stderr
    required = _audit(nowhere, AUDIT_REQUIRED="1")
    assert required.returncode == 2 and "NOT AUDITED" in required.stderr
