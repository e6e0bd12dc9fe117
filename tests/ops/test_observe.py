"""What the gateway records of each request, in process: its request id."""

from __future__ import annotations

import pytest

from typegpt_gateway.ops import observe

UUID_LENGTH = 36


@pytest.mark.parametrize(
    ("metadata", "honoured"),
    [
        ([("x-request-id", "abc-123")], True),
        ([("x-request-id", "")], False),
        ([("x-request-id", "x" * 201)], False),
        ([("x-request-id", "tab\there")], False),
        ([("x-request-id", "é")], False),
        ([("other", "abc")], False),
        (None, False),
    ],
)
def test_request_id_from(metadata, honoured):
    request_id = observe.request_id_from(metadata)
    if honoured:
        assert request_id == metadata[0][1]
    else:
        assert len(request_id) == UUID_LENGTH
