"""Candidate seeds: reproducible for one seed, disjoint across seeds (``iama/seeds.py``), and
what the server gives vLLM."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from in_process import serve

from iama.seeds import MAX_CANDIDATES, MAX_SEED, candidate_base_seed, candidate_seed

pytestmark = pytest.mark.inprocess

N = 256  # the largest budget


@given(st.integers(0, MAX_SEED), st.integers(0, MAX_SEED))
def test_different_seeds_share_no_candidate(a, b):
    if a == b:
        assert candidate_base_seed(a) == candidate_base_seed(b)
        return
    ra = range(candidate_base_seed(a), candidate_base_seed(a) + N)
    rb = range(candidate_base_seed(b), candidate_base_seed(b) + N)
    assert not set(ra) & set(rb)


def test_consecutive_seeds_are_far_apart_and_in_range():
    bases = [candidate_base_seed(s) for s in range(10_000)]
    assert len(set(bases)) == len(bases)
    ordered = sorted(bases)
    assert min(b - a for a, b in itertools.pairwise(ordered)) > N
    assert all(0 <= b and b + MAX_CANDIDATES <= MAX_SEED for b in bases)
    assert candidate_seed(7, 3) == candidate_base_seed(7) + 3
    with pytest.raises(ValueError):
        candidate_seed(7, MAX_CANDIDATES)
    with pytest.raises(ValueError):
        candidate_base_seed(-1)


async def test_the_engine_gets_the_hashed_base_and_candidates_follow_it():
    async with serve() as s:
        body = {"prompt": "Hi", "reward_weights": {"sentiment": 1}, "budget": 4, "max_tokens": 4}
        for seed in (0, 1, 0):
            assert (await s.client.post("/v1/align", json={**body, "seed": seed})).status_code == 200
        seeds = [call[1].seed for call in s.engine.calls]
        assert seeds == [candidate_base_seed(0), candidate_base_seed(1), candidate_base_seed(0)]
        er = {**body, "seed": 5, "early_rejection": {"checkpoints": [1], "keep": 1.0}}
        assert (await s.client.post("/v1/align", json=er)).status_code == 200
        per_candidate = sorted(call[1].seed for call in s.engine.calls[-4:])
        assert per_candidate == [candidate_seed(5, j) for j in range(4)]  # plain BoN's children, one request each
        unseeded = await s.client.post("/v1/align", json=body)
        assert unseeded.status_code == 200 and s.engine.calls[-1][1].seed is None
