"""Adaptive KL coefficient (Ziegler et al. 2019): steer the measured KL[π‖π_ref] to a target.

β ← β·(1 + clip((KL − target)/target, −0.2, 0.2)·n/horizon), bounded to [min_beta, max_beta].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class AdaptiveKLController:
    beta: float
    target: float
    horizon: int
    min_beta: float = 1e-4
    max_beta: float = 10.0

    def update(self, kl: float, n_steps: int = 1) -> float:
        err = max(-0.2, min(0.2, (kl - self.target) / self.target))
        self.beta *= 1.0 + err * n_steps / self.horizon
        self.beta = min(self.max_beta, max(self.min_beta, self.beta))
        return self.beta

    def state(self) -> dict[str, float]:
        return asdict(self)
