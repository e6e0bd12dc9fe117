"""What `kubectl apply -k DIR` would apply, without kubectl or a cluster: a kustomization's
resources (files and other kustomization directories), then its JSON patches.

Only those kustomize features are read; a kustomization using any other field is refused
rather than half-rendered, so that what the tests check is what kubectl applies. Like
kustomize, it refuses a resource directory containing one being loaded (a cycle), a file
outside the kustomization's directory, a resource id (group, kind, name) given twice, and a
failing patch operation (`test` included). No pip-installable kustomize runs on Python 3.11
(pykustomize needs 3.14; the `kustomize` package is something else).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

FILENAME = "kustomization.yaml"
FIELDS = frozenset({"apiVersion", "kind", "resources", "patches"})
PATCH_FIELDS = frozenset({"target", "patch"})
TARGET_FIELDS = frozenset({"group", "version", "kind", "name"})

Resource = dict[str, Any]


class KustomizeError(Exception):
    """A kustomization kubectl would refuse, or one using a feature not read here."""


def render(directory: Path) -> list[Resource]:
    return _render(directory.resolve(), ())


def kustomization(directory: Path) -> dict[str, Any]:
    path = directory / FILENAME
    if not path.is_file():
        raise KustomizeError(f"{directory} has no {FILENAME}")
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise KustomizeError(f"{path} is not a mapping")
    if document.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind {document.get('kind')!r} is not Kustomization")
    unknown = set(document) - FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields not rendered by this loader: {sorted(unknown)}")
    return document


def resource_paths(directory: Path) -> list[Path]:
    """The files and directories a kustomization lists in `resources`, resolved."""
    return [
        (directory / entry).resolve() for entry in kustomization(directory).get("resources", [])
    ]


def _render(directory: Path, loading: tuple[Path, ...]) -> list[Resource]:
    document = kustomization(directory)
    loading = (*loading, directory)
    resources: list[Resource] = []
    for path in resource_paths(directory):
        if path.is_dir():
            if any(root.is_relative_to(path) for root in loading):
                raise KustomizeError(f"cycle: {path} contains {directory}, being loaded")
            resources += _render(path, loading)
        elif path.is_file():
            # kustomize's default load restrictor: a file must be inside the kustomization's
            # own directory (another directory is loaded as a kustomization of its own).
            if not path.is_relative_to(directory):
                raise KustomizeError(f"{path} is outside {directory}")
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        else:
            raise KustomizeError(f"{directory / FILENAME}: resource {path} does not exist")
    _check_unique(resources, directory)
    for patch in document.get("patches", []):
        _apply_patch(patch, resources, directory)
    return resources


def resource_id(resource: Resource) -> tuple[str, str, str]:
    group = resource["apiVersion"].rpartition("/")[0]
    return group, resource["kind"], resource["metadata"]["name"]


def _check_unique(resources: list[Resource], directory: Path) -> None:
    seen = set()
    for resource in resources:
        key = resource_id(resource)
        if key in seen:
            raise KustomizeError(f"{directory}: {key} is given twice")
        seen.add(key)


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    group, _, version = resource["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": resource["kind"]}
    wanted["name"] = resource["metadata"]["name"]
    return all(wanted[field] == value for field, value in target.items())


def _apply_patch(patch: dict[str, Any], resources: list[Resource], directory: Path) -> None:
    if set(patch) != PATCH_FIELDS or not set(patch["target"]) <= TARGET_FIELDS:
        raise KustomizeError(f"{directory}: only inline patches with a target are read: {patch}")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise KustomizeError(f"{directory}: only JSON patches (a list of operations) are read")
    targets = [index for index, r in enumerate(resources) if _matches(r, patch["target"])]
    # A target selecting nothing is no error to kustomize; here it is a mistake in the patch.
    if not targets:
        raise KustomizeError(f"{directory}: patch target {patch['target']} matches nothing")
    for index in targets:
        patched = copy.deepcopy(resources[index])
        for operation in operations:
            patched = apply_operation(patched, operation)
        resources[index] = patched


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"not a JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, appending: bool) -> int:
    if appending and token == "-":
        return len(container)
    if not token.isdigit():
        raise KustomizeError(f"not a list index: {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not appending):
        raise KustomizeError(f"list index {index} out of range")
    return index


def _child(node: Any, token: str, path: str) -> Any:
    try:
        if isinstance(node, list):
            return node[_index(node, token, appending=False)]
        return node[token]
    except (KeyError, TypeError) as exc:
        raise KustomizeError(f"{path}: no such path") from exc


def apply_operation(document: Any, operation: dict[str, Any]) -> Any:
    """One RFC 6902 operation (add, remove, replace, test) applied to `document`, in place."""
    op, path = operation["op"], operation["path"]
    tokens = _pointer(path)
    parent = document
    for token in tokens[:-1]:
        parent = _child(parent, token, path)
    last = tokens[-1]
    if op == "test":
        if _child(parent, last, path) != operation["value"]:
            raise KustomizeError(f"test failed at {path}: {_child(parent, last, path)!r}")
    elif op == "add":
        if isinstance(parent, list):
            parent.insert(_index(parent, last, appending=True), operation["value"])
        else:
            parent[last] = operation["value"]
    elif op == "remove":
        _child(parent, last, path)  # must exist
        del parent[int(last) if isinstance(parent, list) else last]
    elif op == "replace":
        _child(parent, last, path)  # must exist
        parent[int(last) if isinstance(parent, list) else last] = operation["value"]
    else:
        raise KustomizeError(f"JSON patch operation {op!r} is not read here")
    return document
