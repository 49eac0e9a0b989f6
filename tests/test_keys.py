"""API keys with a policy (iama_server.keys): the keys file, plain IAMA_API_KEYS, lookups by
bearer token, reloads (by call, by the file watcher, by SIGHUP) that keep the keys in use when the
new file is broken, and secrets that never surface."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import threading
from pathlib import Path

import pytest
import yaml
from in_process import until
from pydantic import SecretStr

from iama.configfile import ConfigError
from iama_server.keys import (
    ANONYMOUS,
    PRIORITIES,
    KeyPolicy,
    KeyRing,
    Limits,
    hash_key,
    install_sighup,
    watch_keys_file,
)

pytestmark = pytest.mark.inprocess

ACME_KEY = "sk-acme-7f3a9c"
GLOBEX_KEY = "sk-globex-41d2"


def entry(name: str, key: str, **policy: object) -> dict[str, object]:
    return {"name": name, "sha256": hash_key(key), **policy}


def write_keys(path: Path, *entries: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({"keys": list(entries)}))
    return path


def test_hash_key_is_the_documented_sha256_hex():
    assert hash_key("KEY") == hashlib.sha256(b"KEY").hexdigest()


def test_a_keys_file_gives_each_key_its_limits_priority_and_models(tmp_path: Path):
    path = write_keys(
        tmp_path / "keys.yaml",
        entry(
            "acme",
            ACME_KEY,
            limits={"max_budget": 16, "max_tokens": 512, "tokens_per_minute": 1000, "max_concurrent_requests": 2},
            priority="high",
            models=["base", "acme-adapter"],
        ),
        entry("globex", GLOBEX_KEY),
    )
    ring = KeyRing(path)
    acme = ring.lookup(ACME_KEY)
    assert acme is not None and acme.name == "acme"
    assert acme.limits == Limits(max_budget=16, max_tokens=512, tokens_per_minute=1000, max_concurrent_requests=2)
    assert acme.scheduling_priority == 0
    assert acme.allows("acme-adapter") and not acme.allows("globex-adapter")
    globex = ring.lookup(GLOBEX_KEY)
    assert globex is not None and globex.limits == Limits() and globex.scheduling_priority == 1
    assert globex.allows("anything")
    assert ring.lookup("sk-unknown") is None
    assert ring.lookup("") is None
    assert len(ring) == 2


def test_priorities_are_vllms_lower_runs_first():
    assert list(PRIORITIES) == ["high", "normal", "low"]
    assert PRIORITIES["high"] < PRIORITIES["normal"] < PRIORITIES["low"]


def test_plain_api_keys_become_key_1_key_2_without_limits_at_normal_priority():
    ring = KeyRing(api_keys=[SecretStr("first"), "second"])
    first, second = ring.lookup("first"), ring.lookup("second")
    assert first is not None and second is not None
    assert (first.name, second.name) == ("key-1", "key-2")
    assert first.limits == Limits() and first.priority == "normal" and first.models is None


def test_plain_keys_and_a_keys_file_serve_together_and_may_not_collide(tmp_path: Path):
    path = write_keys(tmp_path / "keys.yaml", entry("acme", ACME_KEY))
    ring = KeyRing(path, api_keys=["plain"])
    assert [p.name for p in (ring.lookup(ACME_KEY), ring.lookup("plain")) if p] == ["acme", "key-1"]
    with pytest.raises(ConfigError, match="'key-1' and 'acme' have the same sha256") as info:
        KeyRing(path, api_keys=[ACME_KEY])
    assert ACME_KEY not in str(info.value)
    write_keys(path, entry("key-1", GLOBEX_KEY))
    with pytest.raises(ConfigError, match="two keys are named 'key-1'"):
        KeyRing(path, api_keys=["plain"])


def test_a_server_without_keys_is_open_and_every_caller_is_anonymous():
    ring = KeyRing()
    assert ring.lookup("") is ANONYMOUS and ring.lookup("anything") is ANONYMOUS
    assert ANONYMOUS.limits == Limits()


def test_an_empty_keys_file_admits_nobody(tmp_path: Path):
    ring = KeyRing(write_keys(tmp_path / "keys.yaml"))
    assert ring.lookup("anything") is None and len(ring) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("keys: [{name: acme, sha256: 'x'\n", "not valid YAML at line"),
        ("- just a list\n", "the top level must be a mapping"),
        ("keyz: []\n", "keyz: Extra inputs are not permitted"),
        (f"keys: [{{name: acme, sha256: {hash_key('a')}, colour: red}}]\n", "keys.0.colour: Extra inputs"),
        (f"keys: [{{name: acme, sha256: {hash_key('a').upper()}}}]\n", "keys.0.sha256: must be the key's SHA-256"),
        (f"keys: [{{name: acme, sha256: {ACME_KEY}}}]\n", "keys.0.sha256: must be the key's SHA-256"),
        (f"keys: [{{name: 'a b', sha256: {hash_key('a')}}}]\n", "keys.0.name: String should match pattern"),
        (f"keys: [{{name: acme, sha256: {hash_key('a')}, priority: urgent}}]\n", "keys.0.priority: Input should be"),
        (f"keys: [{{name: acme, sha256: {hash_key('a')}, models: []}}]\n", "keys.0.models: "),
        (f"keys: [{{name: a, sha256: {hash_key('a')}, limits: {{max_tokens: 0}}}}]\n", "keys.0.limits.max_tokens: "),
        (
            f"keys: [{{name: a, sha256: {hash_key('a')}}}, {{name: a, sha256: {hash_key('b')}}}]\n",
            "keys: two keys are named 'a'",
        ),
        (
            f"keys: [{{name: a, sha256: {hash_key('a')}}}, {{name: b, sha256: {hash_key('a')}}}]\n",
            "keys: keys 'a' and 'b' have the same sha256",
        ),
    ],
)
def test_a_bad_keys_file_is_one_line_naming_the_file_and_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        KeyRing(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message, message
    assert "\n" not in message and ACME_KEY not in message


def test_a_missing_keys_file_stops_the_start(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        KeyRing(tmp_path / "absent.yaml")


def test_a_key_never_appears_in_a_repr_an_error_or_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    policy = KeyPolicy(name="acme", sha256=hash_key(ACME_KEY))
    assert hash_key(ACME_KEY) not in repr(policy) and "acme" in repr(policy)
    with pytest.raises(ConfigError, match="entries 1 and 3 are the same key") as info:
        KeyRing(api_keys=[ACME_KEY, GLOBEX_KEY, ACME_KEY])
    assert ACME_KEY not in str(info.value)
    path = write_keys(tmp_path / "keys.yaml", entry("acme", ACME_KEY))
    ring = KeyRing(path)
    path.write_text(f"keys: [{{name: acme, sha256: {ACME_KEY}}}]\n")  # the key pasted where its hash goes
    with caplog.at_level(logging.INFO, logger="iama.server"):
        problem = ring.reload()
    assert problem is not None and ACME_KEY not in problem
    assert caplog.records and all(ACME_KEY not in r.getMessage() for r in caplog.records)


def test_reload_swaps_in_the_new_keys(tmp_path: Path):
    path = write_keys(tmp_path / "keys.yaml", entry("acme", ACME_KEY))
    ring = KeyRing(path)
    write_keys(path, entry("globex", GLOBEX_KEY, priority="low"))
    assert ring.reload() is None
    assert ring.lookup(ACME_KEY) is None
    globex = ring.lookup(GLOBEX_KEY)
    assert globex is not None and globex.priority == "low"


def test_a_broken_reload_keeps_the_keys_in_use_and_says_why_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = write_keys(tmp_path / "keys.yaml", entry("acme", ACME_KEY))
    ring = KeyRing(path)
    assert ring.reload_if_changed() is None  # nothing changed: nothing read
    path.write_text("keys: [{name: acme\n")
    with caplog.at_level(logging.WARNING, logger="iama.server"):
        problem = ring.reload_if_changed()
        assert ring.reload_if_changed() is None  # reported once, not at every poll
    assert problem is not None and "\n" not in problem
    assert problem.startswith("keys not reloaded, keeping the 1 in use: ") and f"{path}: not valid YAML" in problem
    assert [r.getMessage() for r in caplog.records] == [problem]
    acme = ring.lookup(ACME_KEY)
    assert acme is not None and acme.name == "acme"
    path.unlink()
    assert "no such file" in (ring.reload() or "") and ring.lookup(ACME_KEY) is not None


def test_lookups_during_reloads_see_the_old_keys_or_the_new_never_neither(tmp_path: Path):
    """A request in flight is never dropped by a reload: the ring swaps one mapping at once."""
    old = write_keys(tmp_path / "old.yaml", entry("acme", ACME_KEY, priority="low"))
    new_text = yaml.safe_dump({"keys": [entry("acme", ACME_KEY, priority="high"), entry("globex", GLOBEX_KEY)]})
    old_text = old.read_text()
    ring = KeyRing(old)
    stop = threading.Event()
    seen: list[str | None] = []  # each lookup's priority; None: the key was missing

    def look_up_until_stopped() -> None:
        while not stop.is_set():
            policy = ring.lookup(ACME_KEY)
            seen.append(None if policy is None else policy.priority)

    looker = threading.Thread(target=look_up_until_stopped)
    looker.start()
    try:
        for i in range(200):
            old.write_text(new_text if i % 2 == 0 else old_text)
            assert ring.reload() is None
    finally:
        stop.set()
        looker.join(timeout=60)
    assert not looker.is_alive()
    assert seen and set(seen) <= {"low", "high"}


async def test_the_watcher_reloads_when_the_file_changes_and_keeps_the_keys_when_it_breaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = write_keys(tmp_path / "keys.yaml", entry("acme", ACME_KEY))
    ring = KeyRing(path)
    watcher = asyncio.create_task(watch_keys_file(ring, interval_s=0.05))
    try:
        write_keys(path, entry("acme", ACME_KEY), entry("globex", GLOBEX_KEY))
        await until(lambda: ring.lookup(GLOBEX_KEY) is not None, "the watcher to load the new key")
        with caplog.at_level(logging.WARNING, logger="iama.server"):
            path.write_text("keys: [{name: acme\n")
            await until(
                lambda: any("not valid YAML" in r.getMessage() for r in caplog.records),
                "the watcher to report the broken file",
            )
        assert ring.lookup(ACME_KEY) is not None and ring.lookup(GLOBEX_KEY) is not None
        replacement = tmp_path / "keys.yaml.new"  # replaced by a rename, as editors and ConfigMaps do
        write_keys(replacement, entry("globex", GLOBEX_KEY))
        os.replace(replacement, path)
        await until(lambda: ring.lookup(ACME_KEY) is None, "the watcher to load the renamed-in file")
        assert ring.lookup(GLOBEX_KEY) is not None
    finally:
        watcher.cancel()


async def test_the_watcher_needs_a_file_and_a_sane_interval(tmp_path: Path):
    with pytest.raises(ValueError, match="no keys file"):
        await watch_keys_file(KeyRing(api_keys=["plain"]))
    ring = KeyRing(write_keys(tmp_path / "keys.yaml"))
    with pytest.raises(ValueError, match=r"interval_s must be within 0\.05 and 60 s"):
        await watch_keys_file(ring, interval_s=0.0)


async def test_sighup_reloads_the_keys(tmp_path: Path):
    path = write_keys(tmp_path / "keys.yaml", entry("acme", ACME_KEY))
    ring = KeyRing(path)
    loop = asyncio.get_running_loop()
    install_sighup(loop, ring)
    try:
        write_keys(path, entry("globex", GLOBEX_KEY))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: ring.lookup(GLOBEX_KEY) is not None, "SIGHUP to reload the keys file")
        assert ring.lookup(ACME_KEY) is None
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
