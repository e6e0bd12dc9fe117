"""Static checks of deploy/kubernetes: every manifest `kubectl apply -k` would apply, rendered
without kubectl (tests/kustomization.py), validated against the Kubernetes API schemas
(kubernetes-validate) and cross-checked against the gateway's code, the Dockerfile and the
compose file. No cluster is needed.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from google.api import annotations_pb2
from kubernetes_validate.utils import all_versions
from kustomization import KustomizeError, render, resource_paths
from prometheus_client import Counter
from settings_env import env_names, setting_by_env_name
from test_deploy_files import COMPOSE_FILE, dockerfile, exec_form

from typegpt.gateway.v1 import status_pb2
from typegpt_gateway.api.access import keyless_paths
from typegpt_gateway.ops import metrics
from typegpt_gateway.process import workers
from typegpt_gateway.process.supervisor import STOP_GRACE
from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream.upstreams_file import GatewayConfig, load_config

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
K8S = REPO / "deploy" / "kubernetes"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
# What `kubectl apply -k` is pointed at (README "Running on Kubernetes"); the other
# kustomizations are parts of these.
ENTRY_POINTS = {
    "default": K8S,
    "managed": K8S / "overlays" / "managed",
    "request-rate": K8S / "overlays" / "request-rate",
}
IN_CLUSTER = ("default", "request-rate")
GATEWAY = "typegpt-gateway"
# Settings whose value a pod must share with every other pod once there are several.
SHARED_STATE = ("database_url", "redis_url")

Resource = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Resource]]:
    return {name: render(path) for name, path in ENTRY_POINTS.items()}


@pytest.fixture(scope="module")
def secret_example() -> Resource:
    document = yaml.safe_load(SECRET_EXAMPLE.read_text())
    assert isinstance(document, dict)
    return document


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def pod_spec(workload: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workloads(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] in ("Deployment", "StatefulSet")]


def gateway_container(resources: list[Resource]) -> dict[str, Any]:
    (container,) = [
        c
        for c in pod_spec(find(resources, "Deployment", GATEWAY))["containers"]
        if c["name"] == "gateway"
    ]
    return container


def env_entries(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def secret_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]
        for value in node.values():
            yield from secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from secret_refs(item)


def image_env() -> dict[str, str]:
    """The gateway's settings the image sets (Dockerfile ENV)."""
    env = {}
    for args in dockerfile("ENV"):
        for word in shlex.split(args):
            name, _, value = word.partition("=")
            if name.startswith("GATEWAY_"):
                env[name] = value
    return env


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables with a value of their own (not from a Secret, not built
    from other variables)."""
    return {
        entry["name"]: entry["value"]
        for entry in container.get("env", [])
        if "value" in entry and "$(" not in entry["value"]
    }


def container_settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the gateway in this container reads them: the image's ENV, then the
    manifest's literal values (a value Settings cannot parse fails here)."""
    for name in setting_by_env_name():
        monkeypatch.delenv(name, raising=False)
    for name, value in {**image_env(), **literal_env(container)}.items():
        monkeypatch.setenv(name, value)
    return Settings()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    return ipaddress.ip_address(host).is_loopback


def volume_for(container: dict[str, Any], pod: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume (and its mount) a path of the container is written to; {} on the image's
    own (read-only) filesystem."""
    target = PurePosixPath(path)
    mounts = [
        mount
        for mount in container.get("volumeMounts", [])
        if target == PurePosixPath(mount["mountPath"])
        or PurePosixPath(mount["mountPath"]) in target.parents
    ]
    if not mounts:
        return {}
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod.get("volumes", []) if v["name"] == mount["name"]]
    return {**volume, "mount": mount}


def upstreams_file(
    resources: list[Resource], monkeypatch: pytest.MonkeyPatch, tmp: Path
) -> GatewayConfig:
    """The upstreams file the gateway's GATEWAY_CONFIG names, through its ConfigMap volume,
    loaded by the gateway's own loader."""
    deployment = find(resources, "Deployment", GATEWAY)
    container = gateway_container(resources)
    config = container_settings(container, monkeypatch).config
    assert config is not None, "GATEWAY_CONFIG is not set"
    volume = volume_for(container, pod_spec(deployment), str(config))
    assert "configMap" in volume, f"{config} is not on a ConfigMap volume"
    relative = PurePosixPath(config).relative_to(volume["mount"]["mountPath"])
    data = find(resources, "ConfigMap", volume["configMap"]["name"])["data"]
    local = tmp / "gateway.yaml"
    local.write_text(data[str(relative)])
    return load_config(local)


def dockerfile_user_ids() -> tuple[int, int]:
    run = " ".join(dockerfile("RUN"))
    uid = re.search(r"useradd\b[^&;]*--uid\s+(\d+)", run)
    gid = re.search(r"groupadd\b[^&;]*--gid\s+(\d+)", run)
    assert uid and gid, "the Dockerfile's user has no fixed uid and gid"
    return int(uid.group(1)), int(gid.group(1))


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


# --- the kustomizations --------------------------------------------------------------------------


def test_entry_points_are_the_kustomizations_nothing_else_includes() -> None:
    directories = {path.parent.resolve() for path in K8S.rglob("kustomization.yaml")}
    included = {path for d in directories for path in resource_paths(d) if path.is_dir()}
    assert directories - included == {path.resolve() for path in ENTRY_POINTS.values()}


def test_every_manifest_file_is_applied() -> None:
    listed = {path for d in K8S.rglob("kustomization.yaml") for path in resource_paths(d.parent)}
    manifests = {
        path.resolve()
        for path in K8S.rglob("*.yaml")
        if path.name != "kustomization.yaml" and path != SECRET_EXAMPLE
    }
    assert manifests - listed == set(), "listed in no kustomization"


# Every Kubernetes release the package has schemas for (1.25 to 1.37 in 1.37.0).
@pytest.mark.parametrize(
    "version", sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))
)
def test_manifests_validate_against_the_api_schemas(
    rendered: dict[str, list[Resource]], secret_example: Resource, version: str
) -> None:
    # Strict: a field the API does not know (a typo) fails too.
    documents = [r for resources in rendered.values() for r in resources] + [secret_example]
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_renderings_hold_what_the_readme_says(rendered: dict[str, list[Resource]]) -> None:
    kinds = {name: sorted(r["kind"] for r in resources) for name, resources in rendered.items()}
    gateway = [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    assert kinds["managed"] == gateway
    for name in IN_CLUSTER:
        assert kinds[name] == sorted([*gateway, "Service", "Service", "StatefulSet", "StatefulSet"])
    # The Secret is made by hand, never applied from the repository.
    assert all("Secret" not in k for k in kinds.values())


def write_kustomization(directory: Path, **fields: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    document = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({**document, **fields}))
    return directory


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"resources": [".."]}, "cycle"),
        ({"resources": ["../outside.yaml"]}, "outside"),
        ({"namePrefix": "x-"}, "not rendered"),
        ({"resources": ["cm.yaml", "cm.yaml"]}, "twice"),
        (
            {
                "resources": ["cm.yaml"],
                "patches": [
                    {
                        "target": {"kind": "ConfigMap", "name": "cm"},
                        "patch": "- {op: test, path: /data/a, value: '2'}",
                    }
                ],
            },
            "test failed",
        ),
    ],
)
def test_the_loader_refuses_what_kubectl_would(
    tmp_path: Path, fields: dict[str, Any], refused: str
) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(config_map))
    directory = write_kustomization(tmp_path / "k", **fields)
    (directory / "cm.yaml").write_text(yaml.safe_dump({**config_map, "data": {"a": "1"}}))
    with pytest.raises(KustomizeError, match=refused):
        render(directory)


def test_the_loader_applies_json_patches(tmp_path: Path) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}
    base = write_kustomization(tmp_path / "base", resources=["cm.yaml"])
    (base / "cm.yaml").write_text(yaml.safe_dump({**config_map, "data": {"a": "1"}}))
    patch = [
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "replace", "path": "/data/a", "value": "2"},
        {"op": "add", "path": "/data/b", "value": "3"},
        {"op": "add", "path": "/metadata/labels", "value": {"l": "v"}},
        {"op": "remove", "path": "/metadata/labels/l"},
    ]
    target = {"version": "v1", "kind": "ConfigMap", "name": "cm"}
    overlay = write_kustomization(
        tmp_path / "overlay",
        resources=["../base"],
        patches=[{"target": target, "patch": yaml.safe_dump(patch)}],
    )
    (rendered,) = render(overlay)
    assert rendered["data"] == {"a": "2", "b": "3"}
    assert rendered["metadata"]["labels"] == {}


# --- the gateway's Deployment and the code -------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_image_and_command_are_the_dockerfile_and_compose_ones(
    rendered: dict[str, list[Resource]], entry: str
) -> None:
    container = gateway_container(rendered[entry])
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert container["image"] == compose["services"]["gateway"]["image"]
    # serve, with its Envoy in the container (not compose's --no-envoy backend).
    assert container["command"] == exec_form(dockerfile("CMD")[-1])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_env_var_is_a_setting_or_feeds_one(
    rendered: dict[str, list[Resource]],
    entry: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    container = gateway_container(rendered[entry])
    settings = setting_by_env_name()
    upstream_keys = {
        u.api_key_env for u in upstreams_file(rendered[entry], monkeypatch, tmp_path).upstreams
    }
    env = container["env"]
    for index, entry_ in enumerate(env):
        name = entry_["name"]
        # Kubernetes fills $(NAME) in only from variables listed before.
        later = " ".join(str(e.get("value", "")) for e in env[index + 1 :])
        assert name in settings or name in upstream_keys or f"$({name})" in later, (
            f"{name} is not a setting, an upstream's api_key_env, or used by a later variable"
        )
        for used in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(entry_.get("value", ""))):
            assert used in {e["name"] for e in env[:index]}, f"{name} uses {used} before it is set"
    container_settings(container, monkeypatch)  # every literal value parses


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_ports_are_the_settings_ports_and_reachable(
    rendered: dict[str, list[Resource]], entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = gateway_container(rendered[entry])
    settings = container_settings(container, monkeypatch)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == settings.http_port == 7000
    assert ports["metrics"] == settings.metrics_port == 9464
    # A declared port is one the gateway listens on, on the pod's address, not its loopback.
    listening = {
        settings.http_port: settings.host,
        settings.grpc_port: settings.grpc_host,
        settings.metrics_port: settings.metrics_host,
    }
    assert settings.grpc_port == 50051
    for name, number in ports.items():
        assert number in listening, f"port {name} ({number}) is none of the gateway's"
        assert not is_loopback(listening[number]), f"port {name} listens on loopback only"
    exposed = {int(p.split("/")[0]) for args in dockerfile("EXPOSE") for p in args.split()}
    assert set(ports.values()) <= exposed
    service = find(rendered[entry], "Service", GATEWAY)
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (settings.http_port, "http")
    ]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_probes_are_the_gateway_s_health_routes(
    rendered: dict[str, list[Resource]], entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = gateway_container(rendered[entry])
    settings = container_settings(container, monkeypatch)
    status = status_pb2.DESCRIPTOR.services_by_name["StatusService"]

    def route(method: str) -> str:
        return str(status.methods_by_name[method].GetOptions().Extensions[annotations_pb2.http].get)

    expected = {
        "startupProbe": route("GetHealth"),
        "livenessProbe": route("GetHealth"),
        "readinessProbe": route("GetReadiness"),
    }
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe, path in expected.items():
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path
        # The kubelet sends no key.
        assert path in keyless_paths()
        # Through Envoy, as clients come.
        assert ports.get(http_get["port"], http_get["port"]) == settings.http_port
        assert http_get.get("scheme", "HTTP") == ("HTTPS" if settings.tls_cert else "HTTP")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_grace_period_covers_pre_stop_and_drain(
    rendered: dict[str, list[Resource]], entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = find(rendered[entry], "Deployment", GATEWAY)
    container = gateway_container(rendered[entry])
    settings = container_settings(container, monkeypatch)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    # serve's shutdown after SIGTERM: the drain (with several workers, each worker's drain
    # and its own grace to exit), Envoy's last bytes, Envoy's exit.
    drain = settings.drain_timeout + (workers.STOP_GRACE if settings.workers > 1 else 0)
    shutdown = drain + 2 * STOP_GRACE
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= pre_stop + shutdown


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_runs_as_the_image_user_on_a_read_only_root(
    rendered: dict[str, list[Resource]], entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in workloads(rendered[entry]):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]
    deployment = find(rendered[entry], "Deployment", GATEWAY)
    pod = pod_spec(deployment)
    uid, gid = dockerfile_user_ids()
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        uid,
        gid,
    )
    container = gateway_container(rendered[entry])
    settings = container_settings(container, monkeypatch)
    # What serve writes: Envoy's config in a temporary directory (TMPDIR unset: /tmp) and,
    # without DATABASE_URL, the SQLite key store.
    assert "TMPDIR" not in env_entries(container)
    for path in ("/tmp/typegpt-gateway-x/envoy.yaml", str(settings.db)):
        volume = volume_for(container, pod, path)
        assert "emptyDir" in volume, f"{path} is on no writable volume"
        assert not volume["mount"].get("readOnly", False)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_upstreams_file_loads_and_its_keys_come_from_the_secret(
    rendered: dict[str, list[Resource]],
    entry: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    secret_example: Resource,
) -> None:
    config = upstreams_file(rendered[entry], monkeypatch, tmp_path)
    env = env_entries(gateway_container(rendered[entry]))
    for upstream in config.upstreams:
        assert upstream.api_key is None, "an upstream's key belongs in the Secret"
        assert upstream.api_key_env in env
        ref = env[upstream.api_key_env]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secret_example["stringData"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_workers_are_set_once_serve_has_them(
    rendered: dict[str, list[Resource]], entry: str
) -> None:
    if "workers" not in Settings.model_fields:
        pytest.skip("serve --workers is not a setting yet")
    names = env_entries(gateway_container(rendered[entry]))
    assert set(env_names("workers")) & set(names), "set GATEWAY_WORKERS in base/deployment.yaml"


# --- several pods: shared state ------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_several_pods_share_keys_and_limits(
    rendered: dict[str, list[Resource]], entry: str
) -> None:
    resources = rendered[entry]
    hpa = find(resources, "HorizontalPodAutoscaler", GATEWAY)
    deployment = find(resources, "Deployment", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": GATEWAY,
    }
    # The autoscaler owns the replica count.
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["minReplicas"] > 1
    env = env_entries(gateway_container(resources))
    for field in SHARED_STATE:
        assert set(env_names(field)) & set(env), f"several pods need {env_names(field)[0]}"


@pytest.mark.parametrize("entry", IN_CLUSTER)
def test_in_cluster_urls_reach_the_datastores(
    rendered: dict[str, list[Resource]], entry: str
) -> None:
    resources = rendered[entry]
    env = env_entries(gateway_container(resources))
    postgres = find(resources, "StatefulSet", "typegpt-gateway-postgres")
    postgres_env = env_entries(pod_spec(postgres)["containers"][0])
    for name, statefulset in (("DATABASE_URL", postgres), ("REDIS_URL", None)):
        url = urlsplit(env[name]["value"])
        service = find(resources, "Service", str(url.hostname))
        target = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
        workload = statefulset or find(resources, "StatefulSet", str(url.hostname))
        pod = workload["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert workload["spec"]["serviceName"] == service["metadata"]["name"]
        assert target["targetPort"] in [p["name"] for p in pod["spec"]["containers"][0]["ports"]]
    database = urlsplit(env["DATABASE_URL"]["value"])
    assert database.username == postgres_env["POSTGRES_USER"]["value"]
    assert database.path == "/" + postgres_env["POSTGRES_DB"]["value"]
    assert database.password == "$(POSTGRES_PASSWORD)"
    # One password: the gateway's and the server's from the same key of the same Secret.
    assert env["POSTGRES_PASSWORD"]["valueFrom"] == postgres_env["POSTGRES_PASSWORD"]["valueFrom"]


def test_managed_overlay_takes_the_urls_from_the_secret(
    rendered: dict[str, list[Resource]],
) -> None:
    env = env_entries(gateway_container(rendered["managed"]))
    for name in ("DATABASE_URL", "REDIS_URL"):
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name
    assert "POSTGRES_PASSWORD" not in env
    assert "typegpt-gateway-postgres" not in yaml.safe_dump(rendered["managed"])
    assert "typegpt-gateway-redis" not in yaml.safe_dump(rendered["managed"])


def test_selectors_pick_the_gateway_pods(rendered: dict[str, list[Resource]]) -> None:
    resources = rendered["default"]
    deployment = find(resources, "Deployment", GATEWAY)
    labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels
    assert find(resources, "Service", GATEWAY)["spec"]["selector"].items() <= labels
    pdb = find(resources, "PodDisruptionBudget", GATEWAY)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels
    # Never every pod at once.
    hpa = find(resources, "HorizontalPodAutoscaler", GATEWAY)
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    # Datastore pods are not the gateway's.
    for statefulset in workloads(resources):
        if statefulset["kind"] == "StatefulSet":
            pod_labels = statefulset["spec"]["template"]["metadata"]["labels"].items()
            assert not deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels


def test_request_rate_metric_is_the_gateway_s_request_counter(
    rendered: dict[str, list[Resource]],
) -> None:
    hpa = find(rendered["request-rate"], "HorizontalPodAutoscaler", GATEWAY)
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    name = pods["metric"]["name"]
    # The adapter's rule (README) turns the counter NAME_total into the rate NAME_per_second.
    counter = name.removesuffix("_per_second")
    assert counter != name
    families = {
        family.name
        for value in vars(metrics).values()
        if isinstance(value, Counter)
        for family in value.describe()
    }
    assert counter in families
    assert f"{counter}_total" in readme_section("Running on Kubernetes")


# --- the Secret ----------------------------------------------------------------------------------


def test_secret_example_has_every_key_and_no_value(
    rendered: dict[str, list[Resource]], secret_example: Resource
) -> None:
    data = secret_example["stringData"]
    assert set(data.values()) == {""}, "no values in the example"
    assert "data" not in secret_example
    assert not re.search(r"sk-[A-Za-z0-9]|[A-Fa-f0-9]{32}", SECRET_EXAMPLE.read_text())
    for resources in rendered.values():
        for ref in secret_refs(resources):
            assert ref["name"] == secret_example["metadata"]["name"]
            assert ref["key"] in data, f"{ref['key']} is missing from secret.example.yaml"


def test_readme_creates_the_secret_the_default_needs(
    rendered: dict[str, list[Resource]], secret_example: Resource
) -> None:
    section = readme_section("Running on Kubernetes")
    assert "kubectl apply -k deploy/kubernetes\n" in section
    command = re.search(r"kubectl create secret generic (\S+)((?:[^\n]*\\\n)*[^\n]*)", section)
    assert command, "no `kubectl create secret generic` command"
    assert command.group(1) == secret_example["metadata"]["name"]
    given = set(re.findall(r"--from-literal=([A-Z_]+)=", command.group(2)))
    required = {
        ref["key"] for ref in secret_refs(rendered["default"]) if not ref.get("optional", False)
    }
    assert required <= given
