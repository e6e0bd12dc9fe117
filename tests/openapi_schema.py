"""Validate JSON values against schemas in the official OpenAI OpenAPI description.

The description is ~3 MB of YAML, so it is parsed once per process and every
validator built from it is cached.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-openapi.yaml"

# The document has no $id; giving it a URI lets "#/components/schemas/..." refs
# inside it resolve against the whole document rather than the sub-schema.
_SPEC_URI = "urn:openai-openapi"

# Kept on the outside of the anyOf so error messages and docs stay readable.
_ANNOTATIONS = ("title", "description", "deprecated", "default", "example", "examples")


def spec_available() -> bool:
    return SPEC_PATH.is_file()


def validate(instance: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches `#/components/schemas/<name>`."""
    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is not None:
        raise error


def schema_names() -> list[str]:
    return sorted(components())


@functools.cache
def _registry() -> Registry:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open("rb") as fh:
        document = yaml.load(fh, Loader=loader)
    resource = Resource.from_contents(
        _translate_nullable(document), default_specification=DRAFT202012
    )
    return Registry().with_resource(_SPEC_URI, resource)


def components() -> dict[str, Any]:
    """The schemas, with `nullable` already rewritten into JSON Schema terms."""
    return _registry().contents(_SPEC_URI)["components"]["schemas"]


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in components():
        raise KeyError(f"no schema named {schema_name!r} in {SPEC_PATH}")
    return Draft202012Validator(
        {"$ref": f"{_SPEC_URI}#/components/schemas/{schema_name}"},
        registry=_registry(),
    )


def _translate_nullable(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 `nullable: true` into JSON Schema terms.

    The file claims OpenAPI 3.1 but still uses `nullable` in places (e.g. the
    stream chunk's `finish_reason` and `usage`). JSON Schema ignores that
    keyword, so without this the spec would reject the nulls OpenAI really
    sends. anyOf (rather than adding "null" to `type`) also covers the cases
    with `enum` or a sibling `$ref`.
    """
    if isinstance(node, list):
        return [_translate_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _translate_nullable(value) for key, value in node.items()}
    # A property *named* "nullable" maps to a dict, so the `is True` test only
    # matches the keyword.
    nullable = out.get("nullable")
    if isinstance(nullable, bool):
        del out["nullable"]
    if nullable is not True:
        return out
    annotations = {key: out.pop(key) for key in _ANNOTATIONS if key in out}
    return {"anyOf": [out, {"type": "null"}], **annotations}
