"""Non-linear GRPO: TRL's GRPOTrainer with the reward replaced by the IAMA first variation.

The hook is ``GRPOTrainer._calculate_rewards`` (TRL 1.16.0), which returns the reward matrix
*gathered across processes*, where the G completions of each prompt are contiguous. We compute
the first variation there, on whole groups, so multi-process runs are exact; everything after
(group advantages, PPO clip, k3 KL to π_ref, AdamW) is TRL's. The surrogate travels as an extra
reward column whose weight is 1 while the raw rewards keep weight 0 and are only logged.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

from iama.rewards import RewardSet, completion_text, reward_prompt
from iama_trainer.kl_control import AdaptiveKLController
from iama_trainer.surrogate import SurrogateSpec, compute_surrogate

EXPECTED_TRL = "1.16.0"
HOOK_PARAMS = ["self", "inputs", "prompts", "completions", "completion_ids_list"]
SURROGATE = "iama_surrogate"


def check_trl_hook() -> None:
    """Fail loudly if TRL moved the hook we override (the pin in pyproject should prevent it)."""
    import trl

    if trl.__version__ != EXPECTED_TRL:
        raise RuntimeError(f"iama_trainer is built against trl=={EXPECTED_TRL}, found {trl.__version__}")
    hook = getattr(GRPOTrainer, "_calculate_rewards", None)
    if hook is None or list(inspect.signature(hook).parameters) != HOOK_PARAMS:
        raise RuntimeError("GRPOTrainer._calculate_rewards changed signature; the IAMA hook needs updating")
    caller = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    if "self._calculate_rewards(" not in caller or "num_generations" not in caller:
        raise RuntimeError("GRPOTrainer no longer scores through _calculate_rewards; the IAMA hook needs updating")


def reward_funcs(rewards: RewardSet) -> list[Callable[..., list[float]]]:
    """TRL reward callables: one per raw reward (logged), then the surrogate slot."""
    funcs: list[Callable[..., list[float]]] = []
    for name in rewards.names:
        fn = rewards.functions[name]

        def call(prompts: Sequence[Any], completions: Sequence[Any], _fn: Any = fn, **_: Any) -> list[float]:
            return _fn.score([reward_prompt(p) for p in prompts], [completion_text(c) for c in completions]).tolist()

        call.__name__ = name
        funcs.append(call)

    def surrogate_slot(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return [0.0] * len(completions)  # filled in after gathering, in _calculate_rewards

    surrogate_slot.__name__ = SURROGATE
    funcs.append(surrogate_slot)
    return funcs


class IAMAGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose reward is the surrogate of ``surrogate`` (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        surrogate: SurrogateSpec,
        kl_controller: AdaptiveKLController | None = None,
        **kwargs: Any,
    ) -> None:
        check_trl_hook()
        super().__init__(*args, **kwargs)
        self.surrogate = surrogate
        self.kl_controller = kl_controller
        self.groups_checked = 0
        if len(self.reward_funcs) != len(surrogate.rewards.names) + 1:
            raise ValueError("reward_funcs must be the raw rewards followed by the surrogate slot")

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        gathered = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        self._check_whole_groups(prompts, group)
        k = len(self.surrogate.rewards.names)
        raw = gathered[:, :k].detach().float().cpu().numpy()  # (B, K) raw rewards, whole groups
        sur = compute_surrogate(raw, self.surrogate, group)
        gathered[:, k] = torch.as_tensor(sur.rewards, dtype=gathered.dtype, device=gathered.device)
        metrics = self._metrics[mode]
        metrics["iama/objective"].append(float(sur.objective_values.mean()))
        for i, task in enumerate(self.surrogate.objective.tasks):
            label = task.name or f"task{i}"
            metrics[f"iama/R/{label}"].append(float(sur.group_values[:, i].mean()))
            metrics[f"iama/r/{label}"].append(float(sur.task_rewards[i].mean()))
        metrics["iama/surrogate_std"].append(float(np.std(sur.rewards)))
        metrics["iama/processes"].append(float(self.accelerator.num_processes))
        metrics["iama/groups_checked"].append(float(self.groups_checked))
        return gathered

    def _check_whole_groups(self, prompts: list[Any], group: int) -> None:
        """Every group of the gathered batch must hold one prompt's completions only."""
        from accelerate.utils import gather_object

        everyone = [json.dumps(p, sort_keys=True) for p in gather_object(list(prompts))]
        if len(everyone) % group:
            raise RuntimeError(f"gathered batch of {len(everyone)} is not whole groups of {group}")
        for g in range(0, len(everyone), group):
            if len(set(everyone[g : g + group])) != 1:
                raise RuntimeError("a group mixes prompts: completions of one prompt were split across processes")
        self.groups_checked += len(everyone) // group

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["beta"] = float(self.beta)  # the β in force for the steps being logged
        super().log(logs, start_time)
