"""Which candidates a request's own rules allow, before any reward ranks them.

Best-of-N ranks by reward alone, so a JSON answer cut at ``max_tokens`` with a higher reward
would beat a finished, valid one of the same request. The request's rules come first: a
candidate that does not parse as the ``response_format`` asked (or fails its schema) is never
chosen over one that does, and with ``prefer_finished`` one cut at ``max_tokens`` is never
chosen over a finished one. Each candidate gets a tier (0 best) that
:func:`iama.algorithms.select_in_tiers` ranks by before the scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from iama_server.engine import Generation, StructuredOutput

INVALID = 2  # breaks the requested format
CUT = 1  # stopped at max_tokens where finished answers are preferred


def conforms(text: str, structured: StructuredOutput) -> bool:
    """The text parses as JSON, and as the schema when there is one (``json_object``: any
    JSON object)."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError:
        return False
    if structured.json_schema is None:
        return isinstance(value, dict)
    try:
        jsonschema.validate(value, structured.json_schema)
    except jsonschema.ValidationError:
        return False
    return True


def candidate_tiers(
    candidates: Sequence[Generation], structured: StructuredOutput | None, prefer_finished: bool
) -> list[int]:
    """One tier per candidate: 0, or the sum of what it breaks (``INVALID``, ``CUT``)."""
    out = []
    for c in candidates:
        tier = 0
        if structured is not None and not conforms(c.text, structured):
            tier += INVALID
        if prefer_finished and c.finish_reason == "length":
            tier += CUT
        out.append(tier)
    return out


def rules_apply(structured: StructuredOutput | None, prefer_finished: bool) -> bool:
    """Whether a request's selection has any rule beyond the rewards (then it reports how
    many candidates were eligible)."""
    return structured is not None or prefer_finished
