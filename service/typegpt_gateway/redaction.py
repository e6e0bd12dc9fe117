"""Keeping credentials out of everything the gateway says: error messages, bodies and logs.

Two nets. The exact secrets the process holds (upstream keys, database and Redis passwords)
are registered once, where they come into use, and removed wherever they appear, whatever
their format. Anything that looks like a key (`sk-…`, `Bearer …`) is removed as well, which
covers client keys: the gateway only ever holds their hashes, so it cannot know them by value.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from urllib.parse import unquote, urlsplit

REDACTED = "[redacted]"
_REDACTED_BYTES = REDACTED.encode()
# Shorter registered secrets would redact ordinary words; real keys are far longer.
MIN_SECRET_CHARS = 8

# A byte of a key that is not UTF-8 reaches text decoded (grpc reads such metadata as Latin-1)
# or escaped (\xe9 by repr, \u00e9 by JSON, \\xe9 by both): the key goes on past it.
_ODD_BYTE = r"(?:[^\x00-\x7f]|\\{1,2}(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}))"
_TOKEN = rf"(?:[A-Za-z0-9_\-\.=:/+~]|{_ODD_BYTE})"
# Not inside a word: "task-manager-v2" is a model name, not a key.
_SK_PATTERN = re.compile(rf"(?<![A-Za-z0-9])sk-(?:[A-Za-z0-9_\-]|{_ODD_BYTE}){{6,}}")
_SK_REPLACEMENT = "sk-" + REDACTED
# A token with a lower-case letter or digit: placeholders such as YOUR_API_KEY stay.
_BEARER_PATTERN = re.compile(rf"((?i:bearer)\s+)(?={_TOKEN}*[a-z0-9]){_TOKEN}{{6,}}")
_BEARER_REPLACEMENT = r"\1" + REDACTED

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
# The same, encoded once: redact_bytes runs on every answer and every stream event.
_secret_bytes: tuple[bytes, ...] = ()


def register_secret(secret: str | None) -> None:
    """From now on `secret` is removed from every error message and log line of the process."""
    global _secrets, _secret_bytes
    if secret is None or len(secret) < MIN_SECRET_CHARS:
        return
    # Log lines are JSON (the gateway's and Envoy's), where a quote, a backslash or a
    # non-ASCII character of the secret appears escaped.
    forms = {secret, *(json.dumps(secret, ensure_ascii=a)[1:-1] for a in (True, False))}
    with _lock:
        _secrets = _secrets | forms
        _secret_bytes = tuple(form.encode() for form in _secrets)


def register_url_password(url: str) -> None:
    """The password in a database or Redis URL, as written and decoded: a driver's error may
    quote either."""
    password = urlsplit(url).password
    if password is not None:
        register_secret(password)
        register_secret(unquote(password))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without registered secrets, `secrets`, and anything shaped like a key."""
    for secret in (*_secrets, *secrets):
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    # The patterns cost ~10 µs on a log line; most lines hold neither trigger.
    if "sk-" in text:
        text = _SK_PATTERN.sub(_SK_REPLACEMENT, text)
    if "bearer" in text.lower():
        text = _BEARER_PATTERN.sub(_BEARER_REPLACEMENT, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """`data` without registered secrets. Only exact secrets: answers are passed on byte for
    byte, and a pattern could match legitimate text a model wrote."""
    for secret in _secret_bytes:
        if secret in data:
            data = data.replace(secret, _REDACTED_BYTES)
    return data


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record, so messages, arguments and tracebacks are covered."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._inner.format(record))


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Makes every handler of `logger` (default: the root logger) redact what it writes."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter))
