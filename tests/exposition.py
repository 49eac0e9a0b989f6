"""Reading a Prometheus text exposition in tests: one sample by its printed name and labels."""

from __future__ import annotations


def metric(text: str, name: str, missing: float | None = None) -> float:
    """Value of one sample line, ``name`` including its labels as Prometheus prints them.

    A labelled series has no line until first used; ``missing`` is its value then (else the
    sample must be there)."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    if missing is not None:
        return missing
    raise AssertionError(f"{name} not in metrics")
