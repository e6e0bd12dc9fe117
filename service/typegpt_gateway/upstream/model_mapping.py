"""Renaming the model in a request body for an upstream that knows it by another name. Pure.

The client's bytes go upstream unchanged (unknown fields, huge integers, key order), so the
name is spliced in place: every other byte stays as the client sent it.
"""

from __future__ import annotations

import json
import re

import orjson

# A JSON string (unrolled so that long strings cost no backtracking) or a bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]', re.DOTALL)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_COLON = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
# Longer strings cannot be the key "model", however escaped.
_LONGEST_MODEL_KEY = len('"' + r"\u006d" * 5 + '"')


def _is_model_key(token: bytes) -> bool:
    if token == b'"model"':
        return True
    return b"\\" in token and len(token) <= _LONGEST_MODEL_KEY and json.loads(token) == "model"


def replace_model(body: bytes, model: str) -> bytes:
    """`body` (a valid JSON object) with the value of each top-level "model" key replaced."""
    pieces: list[bytes] = []
    copied = 0
    depth = 0
    for match in _TOKEN.finditer(body):
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and _is_model_key(token):
            colon = _COLON.match(body, match.end())
            value = _STRING.match(body, colon.end()) if colon else None
            if value is not None:
                pieces += (body[copied : value.start()], orjson.dumps(model))
                copied = value.end()
    if not pieces:
        return body
    pieces.append(body[copied:])
    return b"".join(pieces)
