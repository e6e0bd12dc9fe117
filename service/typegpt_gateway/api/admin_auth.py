"""Who may use the admin API: whoever presents GATEWAY_ADMIN_KEY, and nobody when it is unset."""

from __future__ import annotations

import hmac

from ..errors import GatewayError
from ..keystore.cache import KeyCache
from ..keystore.records import bearer_token, hash_key


def admin_off() -> GatewayError:
    # A new error each time: a shared instance, raised again and again, keeps every raise's
    # frames on its __traceback__, so each unauthenticated call would leak memory.
    return GatewayError(
        403,
        "The admin API is off: this gateway has no admin key. The operator enables it by "
        "setting GATEWAY_ADMIN_KEY.",
        "permission_error",
    )


def is_admin_key(presented: str, admin_key: str) -> bool:
    """Constant-time: digests of equal length are compared, so even the length stays hidden."""
    return hmac.compare_digest(hash_key(presented), hash_key(admin_key))


def missing_key_error(admin_key: str | None) -> GatewayError:
    """What a caller gets when bearer_token finds no key in its request: from authorize_admin,
    or from the gRPC server on the call's headers (callguard.py)."""
    if admin_key is None:
        return admin_off()
    return GatewayError(
        401,
        "Missing admin key. Send it as 'Authorization: Bearer <GATEWAY_ADMIN_KEY>'.",
        "authentication_error",
    )


async def authorize_admin(authorization: str | None, admin_key: str | None, keys: KeyCache) -> None:
    """Returns when `authorization` carries the admin key; otherwise raises the client's error."""
    if admin_key is None:
        raise admin_off()
    presented = bearer_token(authorization)
    if presented is None:
        raise missing_key_error(admin_key)
    if is_admin_key(presented, admin_key):
        return
    try:
        await keys.authenticate(authorization)
    except GatewayError:
        raise GatewayError(403, "Invalid admin key", "authentication_error") from None
    raise GatewayError(
        403,
        "A client API key cannot use the admin API; it needs the admin key (GATEWAY_ADMIN_KEY).",
        "permission_error",
    )
