"""API keys: one check, used by ``/v1`` (a bearer token) and the playground page (a bearer
token or the cookie its key form sets)."""

from __future__ import annotations

import secrets

PLAYGROUND_COOKIE = "iama_key"


def bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or ""."""
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def key_ok(keys: list[str] | tuple[str, ...], token: str) -> bool:
    """True when the server has no keys, or ``token`` is one of them (compared in constant time)."""
    if not keys:
        return True
    return bool(token) and any(secrets.compare_digest(token, k) for k in keys)
