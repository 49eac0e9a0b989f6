"""Seeds of the N candidates of one request, independent across request seeds.

vLLM seeds child j of an ``n = N`` request with ``seed + j``. Passing the user's seed through
unchanged therefore makes requests seeded s and s + 1 share N − 1 candidates: a user (or a
benchmark) varying the seed to get independent samples gets overlapping ones. Here the request
seed is hashed into a base and candidate j is seeded ``base + j``:

* the same seed gives the same candidates (reproducible);
* different seeds give bases that are 63-bit hashes apart, so their candidate ranges overlap
  only with probability about ``2N / 2^63``;
* candidate j's seed is still vLLM's child-j seed of an ``n = N`` request seeded ``base``, so all
  N candidates stay one vLLM request (the prompt computed once), and the paths that run
  candidates as separate requests (early rejection, the adaptive budget) sample exactly the same
  ones.
"""

from __future__ import annotations

import hashlib

MAX_SEED = 2**63 - 1  # what vLLM serialises and numpy/torch generators accept
MAX_CANDIDATES = 4096  # room above any base for base + j


def candidate_base_seed(seed: int) -> int:
    """The seed of candidate 0 for a request seeded ``seed``; candidate j's is this plus j."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2^63 - 1], got {seed}")
    digest = hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=8, person=b"iama-seeds").digest()
    return int.from_bytes(digest, "little") % (MAX_SEED - MAX_CANDIDATES)


def candidate_seed(seed: int, j: int) -> int:
    """Candidate j's seed (what vLLM gives child j of an ``n = N`` request seeded with the base)."""
    if not 0 <= j < MAX_CANDIDATES:
        raise ValueError(f"candidate index must be in [0, {MAX_CANDIDATES}), got {j}")
    return candidate_base_seed(seed) + j
