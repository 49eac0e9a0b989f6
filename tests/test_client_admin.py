"""The client SDK's model and operator calls against the real app in-process (``FakeEngine``):
``models()`` and ``rewards(model)`` as a key sees them, ``load_adapter`` / ``unload_adapter`` and
``usage(...)`` for admin keys, and the typed errors the others get. The async client talks to the
app over ``httpx.ASGITransport`` (it has no sync twin); that the sync client sends the same
requests is test_client_transport.py's, and its ``usage()`` runs against vLLM in test_client.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from in_process import API_KEY, InProcess, serve
from test_adapters import USER_KEY, WARM_REWARDS, adapter_dir, keys_file

from iama_client import AsyncClient, NotFoundError, PermissionDeniedError

pytestmark = pytest.mark.inprocess


@asynccontextmanager
async def sdk(s: InProcess, key: str) -> AsyncIterator[AsyncClient]:
    """The SDK over the app's ASGI transport."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=s.app)) as http:
        yield AsyncClient(base_url="http://iama", api_key=key, max_retries=0, http_client=http)


async def test_an_admin_loads_an_adapter_reads_usage_and_unloads_it_through_the_sdk(tmp_path: Path):
    warm = adapter_dir(tmp_path / "warm")
    async with (
        serve(enable_lora=True, api_keys=[], keys_file=keys_file(tmp_path)) as s,
        sdk(s, API_KEY) as ops,
        sdk(s, USER_KEY) as user,
    ):
        assert (await ops.models()).ids == ["fake"]

        card = await ops.load_adapter("warm", str(warm))
        assert (card.id, card.parent, card.root) == ("warm", "fake", str(warm.resolve()))
        assert (await ops.models()).ids == ["fake", "warm"]
        assert (await user.models()).ids == ["warm"]  # the base is not this key's to call
        warm_rewards = await user.rewards("warm")
        assert set(WARM_REWARDS) <= set(warm_rewards.names) and warm_rewards.default_reward_weights == {"warmth": 1.0}
        with pytest.raises(PermissionDeniedError) as refused:
            await user.rewards()  # the default model, the base
        assert refused.value.param == "model" and refused.value.code == "model_not_allowed"

        before = datetime.now(UTC) - timedelta(seconds=1)
        r = await user.align(prompt="How was your day?", model="warm", budget=2, max_tokens=8)
        assert r.model == "warm"
        report = await ops.usage(group_by="key", since=before)
        assert report.group_by == "key"
        by_key = {t.group: t for t in report.data}
        assert by_key["user"].requests == 1 and by_key["user"].candidates == 2
        assert by_key["user"].prompt_tokens > 0 and by_key["user"].generated_tokens > 0
        later = await ops.usage(key="user", since=datetime.now(UTC) + timedelta(hours=1))
        assert [t.requests for t in later.data] == [0]  # nothing finished in the future
        with pytest.raises(PermissionDeniedError):
            await user.usage()
        with pytest.raises(PermissionDeniedError):
            await user.unload_adapter("warm")

        gone = await ops.unload_adapter("warm")
        assert (gone.id, gone.deleted) == ("warm", True)
        assert (await ops.models()).ids == ["fake"]
        with pytest.raises(NotFoundError) as missing:
            await ops.unload_adapter("warm")
        assert missing.value.param == "name"


async def test_usage_refuses_a_time_without_a_zone_before_sending_it():
    async with serve() as s, sdk(s, API_KEY) as ops:
        with pytest.raises(TypeError, match=r"'since'.*time zone"):
            await ops.usage(since=datetime(2026, 12, 1))
        await ops.align(prompt="Hi", reward_weights={"sentiment": 1.0}, budget=2, max_tokens=4)
        (before_2000,) = (await ops.usage(until="2000-01-01T00:00:00+00:00")).data
        (since_2000,) = (await ops.usage(since="2000-01-01T00:00:00Z")).data
        assert (before_2000.group, before_2000.requests, since_2000.requests) == (None, 0, 1)
