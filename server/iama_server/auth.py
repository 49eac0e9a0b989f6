"""Where a request's key comes from: a bearer token (``/v1``), or for the playground page also
the cookie its key form sets. Whose key it is, and what it may do: ``keys.py``."""

from __future__ import annotations

PLAYGROUND_COOKIE = "iama_key"


def bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or ""."""
    return header[7:].strip() if header.lower().startswith("bearer ") else ""
