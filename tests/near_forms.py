"""The spellings of a key a careless upstream may echo in an error, that a reader still
recognises: the redaction tests and the gateway's secret tests drive the same ones."""

from __future__ import annotations

NEAR_FORM_IDS = ["upper-cased", "percent-encoded", "spaced-out", "other-separators"]


def near_forms(secret: str) -> list[str]:
    """One form per NEAR_FORM_IDS, in that order."""
    return [
        secret.upper(),
        "".join(f"%{byte:02X}" for byte in secret.encode()),
        " ".join(secret),
        secret.replace("-", "_"),
    ]
