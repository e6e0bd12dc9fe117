"""Keeping credentials out of everything the gateway says: error messages, bodies and logs.

Two nets. The exact secrets the process holds (upstream keys, database and Redis passwords)
are registered once, where they come into use, and removed wherever they appear, whatever
their format. Anything that looks like a key (`sk-…`, `Bearer …`) is removed as well, which
covers client keys: the gateway only ever holds their hashes, so it cannot know them by value.

What counts is what the reader decodes: a secret JSON-escaped in an answer
(`redact_bytes`), cut across the content deltas of a stream (`StreamRedactor`), or in a near
form (other case, percent-encoded, spaced out) in an upstream's error text (`withholds`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

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
# The secrets as registered, and as they appear in JSON text.
_plain: frozenset[str] = frozenset()
_secrets: frozenset[str] = frozenset()
# The same, encoded once: redact_bytes runs on every answer and every stream event.
_secret_bytes: tuple[bytes, ...] = ()
# Any spelling of a secret inside a JSON string, escapes included; searched for only when a
# payload holds an escape of one of the secrets' characters (`_escape_hint`), so the common
# answer (no backslash, or escapes of other characters) pays one `in` or one literal search.
_escaped = re.compile(b"(?!)")
_escape_hint: re.Pattern[bytes] | None = None
# What `withholds` compares: each secret squeezed (see `_squeeze`).
_squeezed: frozenset[str] = frozenset()

# JSON's two-character escapes, by the character they stand for.
_SHORT_ESCAPES = {'"': b'\\"', "\\": b"\\\\", "/": b"\\/", "\b": b"\\b", "\f": b"\\f"}
_SHORT_ESCAPES |= {"\n": b"\\n", "\r": b"\\r", "\t": b"\\t"}
_NOT_ALNUM = re.compile(r"[\W_]+")


def register_secret(secret: str | None) -> None:
    """From now on `secret` is removed from every error message and log line of the process."""
    global _plain, _secrets, _secret_bytes, _escaped, _escape_hint, _squeezed
    if secret is None or len(secret) < MIN_SECRET_CHARS:
        return
    # Log lines are JSON (the gateway's and Envoy's), where a quote, a backslash or a
    # non-ASCII character of the secret appears escaped.
    forms = {secret, *(json.dumps(secret, ensure_ascii=a)[1:-1] for a in (True, False))}
    with _lock:
        _plain = _plain | {secret}
        _secrets = _secrets | forms
        _secret_bytes = tuple(form.encode() for form in _secrets)
        # Longest first: a secret that contains another is redacted whole.
        ordered = sorted(_plain, key=len, reverse=True)
        _escaped = re.compile(b"|".join(_escaped_pattern(s) for s in ordered))
        _escape_hint = _hint_for({char for secret in _plain for char in secret})
        _squeezed = frozenset(q for s in _plain if len(q := _squeeze(s)) >= MIN_SECRET_CHARS)


def _prefixes(secret: str) -> str:
    """A pattern for a non-empty beginning of `secret` that ends the text."""
    pattern = re.escape(secret[-1]) + r"\Z"
    for char in reversed(secret[:-1]):
        pattern = f"{re.escape(char)}(?:{pattern}|\\Z)"
    return pattern


def _escapes(char: str) -> bytes:
    """A pattern for the JSON escapes that decode to `char`."""
    units = char.encode("utf-16-be")
    hexes = [units[i : i + 2].hex() for i in range(0, len(units), 2)]
    spellings = [b"".join(b"\\\\u(?i:" + h.encode() + b")" for h in hexes)]
    if char in _SHORT_ESCAPES:
        spellings.append(re.escape(_SHORT_ESCAPES[char]))
    return b"|".join(spellings)


def _hint_for(chars: set[str]) -> re.Pattern[bytes]:
    """A pattern for an escape that may spell one of `chars`: for ASCII, by its first hex
    digits only. Kept to a literal start and one class, which scans ~20 ns per escape met
    (an alternation of every character's escape took 80 ns, the full pattern 60 µs per KiB)."""
    high = sorted({f"{ord(c):02x}"[0] for c in chars if ord(c) < 0x80})
    spellings = [b"\\\\u00[" + "".join(high).encode() + b"]"] if high else []
    spellings += [_escapes(c) for c in chars if ord(c) >= 0x80]
    spellings += [re.escape(_SHORT_ESCAPES[c]) for c in chars if c in _SHORT_ESCAPES]
    return re.compile(b"|".join(spellings))


def _escaped_pattern(secret: str) -> bytes:
    """Every byte string that a JSON string decodes to `secret`."""
    return b"".join(b"(?:" + re.escape(c.encode()) + b"|" + _escapes(c) + b")" for c in secret)


def _squeeze(text: str) -> str:
    """`text` as a reader would skim it: percent-decoded, one case, letters and digits only."""
    return _NOT_ALNUM.sub("", unquote(unquote(text)).casefold())


def withholds(text: str, secrets: tuple[str, ...] = ()) -> bool:
    """Whether `text` holds a near form of a registered secret or of `secrets`: one that
    exact redaction misses but a reader recovers (other case, percent-encoded, spaced out or
    with other separators). Such text is not passed on at all."""
    squeezed = _squeeze(text)
    extra = (q for s in secrets if s and len(q := _squeeze(s)) >= MIN_SECRET_CHARS)
    return any(q in squeezed for q in (*_squeezed, *extra))


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
    """`data` (JSON) without registered secrets, however a JSON string spells them. Only
    secrets: answers are passed on byte for byte, and a pattern could match legitimate text
    a model wrote."""
    for secret in _secret_bytes:
        if secret in data:
            data = data.replace(secret, _REDACTED_BYTES)
    # Escapes are common (`\\n`, and every non-ASCII character from some upstreams); an
    # escape that spells a character of a secret is not, and only then is the slower
    # pattern run.
    if _escape_hint is not None and b"\\" in data and _escape_hint.search(data):
        data = _escaped.sub(_REDACTED_BYTES, data)
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


def _redact_text(text: str) -> str:
    for secret in _plain:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True, slots=True)
class _SplitWatch:
    """What could begin one of some secrets at the end of a text, and how far back that can
    reach; `ending` finds such a beginning at the end of a JSON string value written without
    escapes (a name ends with a colon instead)."""

    start: re.Pattern[str]
    longest: int
    ending: re.Pattern[bytes]

    def held_back(self, text: str) -> int:
        """How many of the last characters of `text` could begin a secret, at most: those
        wait for the next piece of the text."""
        # The leftmost match is the longest; a search from a key's length before the end
        # costs one call whatever the text's length.
        found = self.start.search(text, max(len(text) - self.longest, 0))
        return 0 if found is None else len(text) - found.start()


@functools.lru_cache(maxsize=16)
def _split_watch(secrets: tuple[str, ...]) -> _SplitWatch | None:
    ordered = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    if not ordered:
        return None
    start = "|".join(_prefixes(s) for s in ordered)
    ending = start.replace(r"\Z", '(?=")').encode() + rb'"\s*[,}\]]'
    return _SplitWatch(re.compile(start), len(ordered[0]), re.compile(ending))


# The fields of a delta that carry running text; `role` and the like are whole in each event.
_TEXT_FIELDS = frozenset({"content", "refusal", "reasoning_content", "reasoning"})


class StreamRedactor:
    """Redacts one chat stream's events, including a secret cut across the deltas of
    consecutive events, which a client joins back together.

    Each text field of each choice's `delta` (`_TEXT_FIELDS`) is read as one
    running text. Its tail that could begin a secret (never more than a secret's length) is
    held back and put in front of the same field's next delta, or sent with the choice's
    finish_reason, or at the end in an event of its own. An event whose deltas this changes
    is re-serialized; every other event passes byte for byte. Not covered: a secret split
    across tool-call arguments, across choices, or across fields.
    """

    def __init__(self, echoable: tuple[str, ...]) -> None:
        """`echoable`: the secrets the upstream could echo, its own keys (it never sees a
        client's key or the admin key): only their beginnings are held back, since every held
        character delays the client. Every registered secret is redacted within an event."""
        self._watch = _split_watch(echoable)
        self._held: dict[tuple[object, str], str] = {}
        self._last: dict[str, Any] | None = None

    def feed(self, data: bytes) -> bytes:
        """`data`, one event's JSON, as the client may see it."""
        data = redact_bytes(data)
        if self._watch is None:
            return data
        # Nothing held back, and no string value ends with a secret's beginning: the event
        # passes as it is, unread. Escapes could spell one, so they are read.
        if not self._held and b"\\" not in data and self._watch.ending.search(data) is None:
            return data
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        changed = False
        for index, choice, delta in _deltas(document):
            self._last = document
            ending = choice.get("finish_reason") is not None
            for field, text in list(delta.items()):
                if field not in _TEXT_FIELDS or not isinstance(text, str):
                    continue
                window = _redact_text(self._held.pop((index, field), "") + text)
                keep = 0 if ending else self._watch.held_back(window)
                if keep:
                    self._held[(index, field)] = window[-keep:]
                    window = window[:-keep]
                if window != text:
                    delta[field] = window
                    changed = True
            if ending:
                for key in [key for key in self._held if key[0] == index]:
                    delta[key[1]] = self._held.pop(key)
                    changed = True
        return orjson.dumps(document) if changed else data

    def flush(self) -> bytes | None:
        """An event with what is still held back, if anything: the stream has ended."""
        if not self._held or self._last is None:
            return None
        choices: dict[object, dict[str, Any]] = {}
        for (index, field), text in self._held.items():
            choice = choices.setdefault(index, {"index": index, "delta": {}, "finish_reason": None})
            choice["delta"][field] = text
        self._held.clear()
        event = {key: value for key, value in self._last.items() if key != "usage"}
        return orjson.dumps({**event, "choices": list(choices.values())})


def _deltas(document: object) -> Iterator[tuple[object, dict[str, Any], dict[str, Any]]]:
    choices = document.get("choices") if isinstance(document, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            index = choice.get("index")
            yield (index if isinstance(index, int | str) else None), choice, delta
