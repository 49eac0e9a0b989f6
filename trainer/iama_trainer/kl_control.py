"""Adaptive KL coefficient, as in the paper: steer the measured KL[π‖π_ref] to a target.

After every step: ``e = clip((KL − target)/target, −0.2, 0.2)``, ``β ← β·(1 + rate·e)``, with
the paper's ``target = 0.1`` and ``rate = 0.1``. (Ziegler et al.'s controller is the same rule
with ``rate = n_steps/horizon``.) ``KL`` is TRL's logged ``kl``: the mean, over the tokens of
the step's completions, of the k3 estimator ``exp(q − p) − (q − p) − 1`` of KL[π‖π_ref] (p and q
the policy's and the reference's log-probabilities) — the same estimator the loss penalises.
``min_beta`` / ``max_beta`` are optional bounds; the paper uses none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class AdaptiveKLController:
    beta: float
    target: float = 0.1
    rate: float = 0.1
    min_beta: float | None = None
    max_beta: float | None = None

    def update(self, kl: float, n_steps: int = 1) -> float:
        """β after ``n_steps`` steps at the measured ``kl`` (one update per step)."""
        err = max(-0.2, min(0.2, (kl - self.target) / self.target))
        self.beta *= (1.0 + self.rate * err) ** n_steps
        if self.min_beta is not None:
            self.beta = max(self.min_beta, self.beta)
        if self.max_beta is not None:
            self.beta = min(self.max_beta, self.beta)
        return self.beta

    def state(self) -> dict[str, float | None]:
        return asdict(self)
