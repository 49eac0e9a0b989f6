"""API keys with a policy: who may call, within which limits, at which priority, on which models.

Operators used to LiteLLM's virtual keys expect each key to carry its own limits; here a YAML
keys file names them:

```yaml
keys:
  - name: acme                      # in usage rows, logs and metrics; never the secret
    sha256: 5e88489...              # the key's SHA-256, 64 lowercase hex digits
    limits: {max_budget: 16, max_tokens: 512, tokens_per_minute: 200000, max_concurrent_requests: 4}
    priority: high                  # high | normal | low (vLLM: lower value scheduled first)
    models: [my-model, my-adapter]  # omitted: every model
  - name: ops
    sha256: 9f86d08...
    admin: true                     # GET /v1/usage for every key, adapters at run time
```

Only the SHA-256 of a key is stored, so the file is no secret to guard and a key's plaintext
appears in no repr, log line or error: hash one with
``python -c "import hashlib;print(hashlib.sha256(b'KEY').hexdigest())"`` or :func:`hash_key`.
Today's plain ``IAMA_API_KEYS`` keep working beside the file: they become ``key-1``, ``key-2``, …
with no limits at normal priority, and admin (they are the operator's own keys).

:class:`KeyRing` answers "whose key is this?" (:meth:`KeyRing.lookup`). :meth:`KeyRing.reload`
re-reads the file, from :func:`watch_keys_file` (polling its mtime, size and inode) or SIGHUP
(:func:`install_sighup`); a broken file keeps the keys in use and says why in one line. The ring
swaps one immutable mapping, so a request in flight keeps the policy it was admitted with and a
lookup sees the old keys or the new ones, never a mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from iama.configfile import ConfigError, read_yaml, validate_config

log = logging.getLogger("iama.server")

Priority = Literal["high", "normal", "low"]
# vLLM's convention (``generate``'s ``priority`` under ``scheduling_policy="priority"``): lower runs first.
PRIORITIES: Mapping[Priority, int] = MappingProxyType({"high": 0, "normal": 1, "low": 2})

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_HASH_HINT = """python -c "import hashlib;print(hashlib.sha256(b'KEY').hexdigest())\""""


def hash_key(key: str) -> str:
    """The SHA-256 hex of ``key``: what a keys file stores in place of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


class Limits(BaseModel):
    """What one key may ask for; ``None`` is unlimited. The per-request bounds are checked where
    the request is validated, the windows and concurrency by ``iama_server.limits``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_budget: int | None = Field(default=None, ge=1, description="largest best-of-N budget (best_of, n)")
    max_tokens: int | None = Field(default=None, ge=1, description="largest max_tokens of one request")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="tokens a minute (charged at the admission cost, refunded to actual use)"
    )
    tokens_per_day: int | None = Field(default=None, ge=1, description="tokens a UTC day, charged alike")
    max_concurrent_requests: int | None = Field(default=None, ge=1, description="requests running at once")


class KeyPolicy(BaseModel):
    """One key: its name, the hash that identifies it, and what it may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="the key's name in usage, logs, metrics and Redis keys: letters, digits, '.', '_', '-'",
    )
    # Not in the repr: a hash of a short or guessable key can be reversed by trying candidates.
    sha256: str = Field(repr=False, description="the key's SHA-256, 64 lowercase hex digits")
    limits: Limits = Field(default_factory=Limits)
    priority: Priority = "normal"
    models: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="models or adapters this key may call; omitted: all"
    )
    admin: bool = Field(default=False, description="may read every key's usage (GET /v1/usage) and manage adapters")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        # The message never echoes the value: it may be a key pasted in by mistake.
        if not _SHA256_HEX.fullmatch(v):
            raise ValueError(f"must be the key's SHA-256 as 64 lowercase hex digits ({_HASH_HINT}), not the key")
        return v

    @property
    def scheduling_priority(self) -> int:
        """The engine's priority for this key's requests (:data:`PRIORITIES`)."""
        return PRIORITIES[self.priority]

    def allows(self, model: str) -> bool:
        """True when this key may call ``model`` (a served model's or an adapter's name)."""
        return self.models is None or model in self.models


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyPolicy]

    @field_validator("keys")
    @classmethod
    def _unique(cls, v: list[KeyPolicy]) -> list[KeyPolicy]:
        _check_unique(v)
        return v


# A server with neither a keys file nor IAMA_API_KEYS is open (as ``auth.key_ok``): every caller
# gets this policy, so usage and limits need no special case.
ANONYMOUS = KeyPolicy(name="anonymous", sha256=hash_key(""), admin=True)


def _check_unique(policies: Sequence[KeyPolicy]) -> None:
    names: set[str] = set()
    by_hash: dict[str, str] = {}
    for p in policies:
        if p.name in names:
            raise ValueError(f"two keys are named {p.name!r}")
        if p.sha256 in by_hash:
            raise ValueError(f"keys {by_hash[p.sha256]!r} and {p.name!r} have the same sha256 (one key, two names)")
        names.add(p.name)
        by_hash[p.sha256] = p.name


def load_keys(path: Path) -> list[KeyPolicy]:
    """The policies of a keys file, or a :class:`ConfigError` naming the file and the problem."""
    return validate_config(KeysFile, read_yaml(path), str(path)).keys


def policies_from_api_keys(api_keys: Sequence[str | SecretStr]) -> list[KeyPolicy]:
    """Plain keys (``IAMA_API_KEYS``) as policies ``key-1``, ``key-2``, …: no limits, normal
    priority, admin (the operator's keys, as they were before keys had policies)."""
    plain = [k.get_secret_value() if isinstance(k, SecretStr) else k for k in api_keys]
    seen: dict[str, int] = {}
    policies = []
    for i, key in enumerate(plain, start=1):
        digest = hash_key(key)
        if digest in seen:  # positions only: the message must not carry the key
            raise ConfigError(f"IAMA_API_KEYS: entries {seen[digest]} and {i} are the same key")
        seen[digest] = i
        policies.append(KeyPolicy(name=f"key-{i}", sha256=digest, admin=True))
    return policies


class KeyRing:
    """Bearer token → :class:`KeyPolicy`, from a keys file and/or plain ``IAMA_API_KEYS``.

    Building it with a broken file raises :class:`ConfigError` (the server must not start with
    keys it cannot read); :meth:`reload` after that keeps the keys in use instead.
    """

    def __init__(self, path: Path | None = None, api_keys: Sequence[str | SecretStr] = ()) -> None:
        self.path = path
        self._fixed = policies_from_api_keys(api_keys)
        self._open = path is None and not self._fixed
        self._reloading = threading.Lock()  # SIGHUP and the watcher may reload at once
        # The file as it was when last read (taken before reading: an edit during the read is
        # seen as a change at the next poll).
        self._read_signature = _signature(path) if path is not None else None
        self._by_hash = self._index(load_keys(path) if path is not None else [])

    def _index(self, from_file: list[KeyPolicy]) -> Mapping[str, KeyPolicy]:
        policies = [*self._fixed, *from_file]
        try:
            _check_unique(policies)
        except ValueError as exc:
            raise ConfigError(f"{self.path} with IAMA_API_KEYS: {exc}") from None
        return MappingProxyType({p.sha256: p for p in policies})

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, token: str) -> KeyPolicy | None:
        """The policy of the key ``token`` (a bearer token), or None for an unknown key.

        An open ring (no file, no plain keys) answers :data:`ANONYMOUS` for every token.
        """
        if self._open:
            return ANONYMOUS
        if not token:
            return None
        digest = hash_key(token)
        policy = self._by_hash.get(digest)  # one read of the mapping: old keys or new, never a mix
        # The dict lookup is on a hash, so its timing tells an attacker nothing about the key;
        # comparing the digests in constant time keeps that true whatever the mapping does.
        if policy is None or not hmac.compare_digest(policy.sha256, digest):
            return None
        return policy

    def reload(self) -> str | None:
        """Re-read the keys file. None when the new keys are in use; otherwise the keys in use
        stay and the problem comes back (and is logged) as one line naming the file."""
        if self.path is None:
            return None
        with self._reloading:
            self._read_signature = _signature(self.path)
            try:
                by_hash = self._index(load_keys(self.path))
            except ConfigError as exc:
                problem = f"keys not reloaded, keeping the {len(self._by_hash)} in use: {exc}"
                log.warning(problem)
                return problem
            self._by_hash = by_hash  # one assignment: atomic for every reader
        log.info("%s: %d keys in use", self.path, len(by_hash))
        return None

    def reload_if_changed(self) -> str | None:
        """:meth:`reload` when the file's mtime, size or inode changed since it was last read
        (a broken file is reported once, not at every poll)."""
        if self.path is None or _signature(self.path) == self._read_signature:
            return None
        return self.reload()


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is edited in place or replaced by a rename; None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


async def watch_keys_file(ring: KeyRing, interval_s: float = 2.0) -> None:
    """Reload ``ring`` whenever its file changes (mtime, size or inode), polling every
    ``interval_s`` (0.05 to 60 s); runs until cancelled. Polling, not inotify: it works on every
    filesystem, a Kubernetes ConfigMap's symlink swap included."""
    if ring.path is None:
        raise ValueError("this key ring has no keys file to watch")
    if not 0.05 <= interval_s <= 60.0:
        raise ValueError(f"interval_s must be within 0.05 and 60 s, got {interval_s}")
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(ring.reload_if_changed)


def install_sighup(loop: asyncio.AbstractEventLoop, ring: KeyRing) -> None:
    """Reload ``ring`` on SIGHUP (``kill -HUP <pid>``), reading the file off the event loop."""

    def reload_logged() -> None:
        try:
            ring.reload()
        except Exception:  # a bug must not vanish inside an executor's unread future
            log.exception("reloading the keys file on SIGHUP failed")

    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, reload_logged))
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread (a Ray replica): polling only
        log.info("keys file: no SIGHUP handler in this thread; reloaded on change only")
