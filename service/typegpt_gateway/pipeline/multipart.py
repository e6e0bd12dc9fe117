"""The text fields of a `multipart/form-data` upload (an audio file and its form), read and
renamed in place. Pure: the upload itself goes upstream byte for byte.

Only what the gateway acts on is read: each part's name, and the value of a text field. The
body must start with its first boundary (no preamble: no client sends one), which is what lets
`replace_field` find the boundary from the body alone, as the pipeline's renaming is given it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import invalid_request

MULTIPART_TYPE = "multipart/form-data"
_BOUNDARY = re.compile(r';\s*boundary=(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
# A text field this long is no model name: its value is not read.
MAX_FIELD_BYTES = 1024


def boundary_of(content_type: str) -> bytes:
    """The boundary a `multipart/form-data` Content-Type names, or the 400."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise invalid_request("Invalid Content-Type header: multipart/form-data needs a boundary.")
    return (match.group(1) or match.group(2)).encode("latin-1")


def _parts(body: bytes, boundary: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(name, start, end) of each part's content in `body`; ValueError for a body that is
    not multipart with this boundary."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + b"\r\n"):
        raise ValueError("the body does not start with its boundary")
    at = len(delimiter) + 2
    closing = b"\r\n" + delimiter
    while True:
        headers_end = body.find(b"\r\n\r\n", at)
        if headers_end < 0:
            raise ValueError("a part without the blank line after its headers")
        name = _NAME.search(body, at, headers_end)
        start = headers_end + 4
        end = body.find(closing, start)
        if end < 0:
            raise ValueError("a part without a boundary after it")
        yield (name.group(1) if name else b""), start, end
        after = end + len(closing)
        if body.startswith(b"--", after):
            return
        if not body.startswith(b"\r\n", after):
            raise ValueError("a boundary followed by neither a part nor the end")
        at = after + 2


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """The value of the text field `name` (its first), None when the form has none; the 400
    for a body that is not the multipart form its Content-Type says."""
    boundary = boundary_of(content_type)
    wanted = name.encode()
    try:
        for part, start, end in _parts(body, boundary):
            if part == wanted:
                if end - start > MAX_FIELD_BYTES:
                    raise invalid_request(f"The form field '{name}' is too long.")
                try:
                    return body[start:end].decode()
                except UnicodeDecodeError:
                    raise invalid_request(f"The form field '{name}' must be UTF-8 text.") from None
    except ValueError as exc:
        raise invalid_request(f"The multipart/form-data body could not be read: {exc}.") from None
    return None


def replace_field(body: bytes, name: str, value: str) -> bytes:
    """`body` with the value of each text field `name` replaced; every other byte as it was.
    The boundary is the body's first line (see the module's note)."""
    first_line = body.split(b"\r\n", 1)[0]
    if not first_line.startswith(b"--"):
        return body
    wanted = name.encode()
    pieces: list[bytes] = []
    copied = 0
    try:
        for part, start, end in _parts(body, first_line[2:]):
            if part == wanted:
                pieces += (body[copied:start], value.encode())
                copied = end
    except ValueError:
        return body
    if not pieces:
        return body
    pieces.append(body[copied:])
    return b"".join(pieces)


def replace_model(body: bytes, model: str) -> bytes:
    return replace_field(body, "model", model)
