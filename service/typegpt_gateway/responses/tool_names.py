"""How a namespace's function is named to chat completions, and its calls named back. Pure.

The Responses API groups functions in namespaces (`{"type": "namespace", "name": "crm",
"tools": [...]}`), and a call of one names both (`"namespace": "crm", "name": "find"`). Chat
completions has no namespaces, and its function names allow letters, digits, `_` and `-`
only: the bridge names such a function `crm__find` upstream, and splits its calls back.
"""

from __future__ import annotations

from collections.abc import Collection

JOIN = "__"


def joined(namespace: str, name: str) -> str:
    return f"{namespace}{JOIN}{name}"


def split(chat_name: str, namespaces: Collection[str]) -> tuple[str | None, str]:
    """(namespace, name) of a function chat completions called `chat_name`: no namespace for
    a function outside them. The longest namespace wins: `a__b__c` is `a__b`'s `c` when the
    request has both `a` and `a__b`."""
    found = [
        namespace
        for namespace in namespaces
        if chat_name.startswith(namespace + JOIN) and len(chat_name) > len(namespace) + len(JOIN)
    ]
    if not found:
        return None, chat_name
    namespace = max(found, key=len)
    return namespace, chat_name[len(namespace) + len(JOIN) :]
