"""Early rejection against vLLM's own state: a rejected candidate must leave the engine, not
only the response. Observed from inside a checkpoint's scoring, which is the one moment the
pruning loop is paused on the candidates' behalf, so the checks count steps, never seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from iama_server.settings import ServerSettings
    from iama_server.vllm_engine import VLLMEngine

    e = VLLMEngine(str(tiny_llama), ServerSettings(kv_cache_gb=1, enforce_eager=True))
    e.start()
    yield e
    e.shutdown()


async def test_rejected_candidates_free_their_requests_and_kv_cache(engine):
    """At the first checkpoint the 16 candidates hold 64 tokens of KV cache each; at the second
    (32 steps later, long after the aborts reached the engine core) only the kept quarter is
    left: vLLM's unfinished-request count and its KV-cache usage must both have dropped."""
    from iama_server.calls import EarlyRejectionPlan
    from iama_server.engine import Sampling
    from iama_server.searches import Scored, early_rejection

    seen: list[tuple[int, int, float]] = []  # (candidates scored, engine's unfinished requests, KV usage)

    async def score(texts: list[str]) -> Scored:
        seen.append((len(texts), engine.unfinished_requests(), engine.stats.kv_cache_usage))
        return Scored({}, np.arange(len(texts), dtype=float))  # any order will do: the lowest three quarters go

    sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=400, seed=11, stop=None)
    plan = EarlyRejectionPlan(checkpoints=(64, 96), keep=0.25, candidates=16)
    run = await early_rejection(engine, engine.encode_text("go " * 8), sampling, plan, "er-kv", score)

    assert len(seen) == 2, f"a checkpoint was not reached: {seen}"
    (scored1, held1, kv1), (scored2, held2, kv2) = seen
    # the tiny random model seldom ends a candidate this early: most of the 16 are still running
    assert scored1 >= 8, seen
    assert held2 <= scored2 <= math.ceil(scored1 / 4) < held1  # the rejected left vLLM's count
    # blocks for 16 × 64 tokens before, for at most 4 × 96 after: the usage must have fallen
    assert 0 < kv2 < 0.75 * kv1, seen
    first = run.checkpoints[0]
    assert len(first.rejected) == scored1 - math.ceil(scored1 / 4) and first.tokens == 64
    assert set(run.rejected) == {i for cp in run.checkpoints for i in cp.rejected}
    assert engine.unfinished_requests() == 0
