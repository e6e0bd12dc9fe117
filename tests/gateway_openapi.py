"""The gateway's own OpenAPI description (openapi/gateway.yaml): loading, validating answers
against it, and refreshing the OpenAI schemas it carries by value.

    python tests/gateway_openapi.py --write   # re-copy OpenAI's schemas below the marker
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "openapi" / "gateway.yaml"
MARKER = "    # --- vendored from OpenAI's openapi.yaml"
# The OpenAI schemas the gateway's answers are, with everything they refer to.
VENDORED_ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "CreateTranscriptionResponseJson",
    "ImagesResponse",
    "Response",
    "ResponseStreamEvent",
    "ListModelsResponse",
    "Model",
)
_URI = "urn:typegpt-gateway-openapi"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@functools.cache
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def operations() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId → (path, method, operation)."""
    found = {}
    for path, item in spec()["paths"].items():
        for method in METHODS:
            if method in item:
                found[item[method]["operationId"]] = (path, method, item[method])
    return found


def response_for(operation: dict[str, Any], status: int) -> tuple[str, dict[str, Any]]:
    """The declared response key ("404" or "default") for `status`, and the response object."""
    responses = operation["responses"]
    key = str(status) if str(status) in responses else "default"
    assert key in responses, f"HTTP {status} is not declared"
    response = responses[key]
    if "$ref" in response:
        response = _pointer(response["$ref"])
    return key, response


def _pointer(ref: str) -> Any:
    node: Any = spec()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    return Registry().with_resource(_URI, resource)


@functools.cache
def _validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{_URI}#{pointer}"}, registry=_registry())


def _declared(operation_id: str, status: int) -> tuple[str, dict[str, Any], str]:
    """The response key, the response object and its JSON pointer in the description."""
    path, method, operation = operations()[operation_id]
    key, response = response_for(operation, status)
    if "$ref" in operation["responses"][key]:
        base = operation["responses"][key]["$ref"].removeprefix("#")
    else:
        base = f"/paths/{_escape(path)}/{method}/responses/{key}"
    return key, response, base


def _check(pointer: str, instance: Any) -> None:
    error = best_match(_validator(pointer).iter_errors(instance))
    if error is not None:
        raise error


def validate_body(operation_id: str, status: int, media_type: str, body: Any) -> None:
    """Raises unless `body` fits the schema declared for that operation, status and type."""
    key, response, base = _declared(operation_id, status)
    content = response.get("content", {})
    assert media_type in content, f"{operation_id} {key}: {media_type} is not declared"
    _check(f"{base}/content/{_escape(media_type)}/schema", body)


def declared_headers(operation_id: str, status: int) -> set[str]:
    """The (lower-cased) response headers declared for that operation and status."""
    return {name.lower() for name in _declared(operation_id, status)[1].get("headers", {})}


def validate_headers(operation_id: str, status: int, headers: Mapping[str, str]) -> set[str]:
    """Raises unless every required declared header is in `headers` (lower-cased names) and
    every declared one present fits its schema; returns the declared ones present."""
    key, response, base = _declared(operation_id, status)
    present = set()
    for name, header in response.get("headers", {}).items():
        pointer = f"{base}/headers/{_escape(name)}"
        if "$ref" in header:
            pointer = header["$ref"].removeprefix("#")
            header = _pointer(header["$ref"])
        value = headers.get(name.lower())
        if value is None:
            assert not header.get("required"), f"{operation_id} {key}: no {name} header"
            continue
        schema = header["schema"]
        # A header is text; an integer schema means digits.
        integer = schema.get("type") == "integer" and value.isascii() and value.isdigit()
        _check(f"{pointer}/schema", int(value) if integer else value)
        present.add(name.lower())
    return present


def validate_schema(name: str, instance: Any) -> None:
    _check(f"/components/schemas/{name}", instance)


def vendored_section() -> str:
    """The text below the marker: OpenAI's schemas for VENDORED_ROOTS, by value."""
    import openapi_schema  # the official description; ~3 MB, so only loaded here

    components = openapi_schema.components()
    wanted: dict[str, Any] = {}
    pending = list(VENDORED_ROOTS)
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        wanted[name] = _without_extensions(components[name])
        pending += sorted(_refs(wanted[name]))
    dumped = yaml.safe_dump(
        {name: wanted[name] for name in sorted(wanted)}, sort_keys=False, width=100
    )
    return "".join(f"    {line}\n" if line else "\n" for line in dumped.splitlines())


def _without_extensions(node: Any) -> Any:
    # x-oaiMeta and x-stainless-* are OpenAI's doc and SDK generator hints.
    if isinstance(node, dict):
        return {
            key: _without_extensions(value)
            for key, value in node.items()
            if not (isinstance(key, str) and key.startswith("x-"))
        }
    if isinstance(node, list):
        return [_without_extensions(item) for item in node]
    return node


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = set()
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*map(_refs, node)) if node else set()
    return set()


def current_text() -> str:
    """openapi/gateway.yaml as it should be: the hand-written part, the marker line, and
    the vendored schemas as OpenAI's description has them now."""
    text = SPEC_PATH.read_text()
    head, marker, _ = text.partition(MARKER)
    assert marker, f"{SPEC_PATH} lost its marker line {MARKER.strip()!r}"
    marker_line = marker + text[len(head) + len(marker) :].split("\n", 1)[0] + "\n"
    return head + marker_line + vendored_section()


def main() -> None:
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    SPEC_PATH.write_text(current_text())
    print(f"wrote {SPEC_PATH}")


if __name__ == "__main__":
    main()
