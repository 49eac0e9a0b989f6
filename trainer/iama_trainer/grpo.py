"""Non-linear GRPO: TRL's GRPOTrainer with the reward replaced by the IAMA first variation.

The hook is ``GRPOTrainer._calculate_rewards`` (TRL 1.16.0), which returns the reward matrix
*gathered across processes*, where the G completions of each prompt are contiguous. We compute
the first variation there, on whole groups, so multi-process runs are exact; everything after
(group advantages, PPO clip, k3 KL to π_ref, AdamW) is TRL's. The surrogate travels as an extra
reward column whose weight is 1 while the raw rewards keep weight 0 and are only logged.

Three guards keep a TRL change from silently training plain GRPO: the version pin and the
hook's signature at start-up (:func:`check_trl_hook`); every gathered batch must be whole
groups of one prompt each; and at the first step, the advantages TRL handed to the loss must
equal the surrogate normalised by TRL's documented rule (:func:`expected_advantages`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

from iama.rewards import RewardSet, completion_text
from iama.sampling import generated_tokens
from iama_trainer.kl_control import AdaptiveKLController
from iama_trainer.surrogate import SurrogateSpec, compute_surrogate, expected_advantages

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
    if "self._calculate_rewards(" not in caller or "num_generations" not in caller or '"advantages"' not in caller:
        raise RuntimeError("GRPOTrainer no longer scores through _calculate_rewards; the IAMA hook needs updating")
    turn = inspect.getsource(GRPOTrainer._generate_single_turn)
    if "torch.isin(completion_ids, torch.tensor(self.eos_token_ids" not in turn or "self.generation_kwargs" not in turn:
        raise RuntimeError(
            "GRPOTrainer no longer masks completions at self.eos_token_ids; sampling.stop needs updating"
        )
    from trl.generation.vllm_generation import VLLMGeneration

    if "self.generation_kwargs" not in inspect.getsource(VLLMGeneration.generate):
        raise RuntimeError("TRL's vLLM rollouts no longer read generation_kwargs; sampling.stop needs updating")


def reward_funcs(rewards: RewardSet, eos_ids: Collection[int]) -> list[Callable[..., list[float]]]:
    """TRL reward callables: one per raw reward (logged), then the surrogate slot. Prompts go
    to the reward set as TRL has them (conversations), so every reward sees what it would see
    when served; token-length rewards count TRL's generated ids (``completion_ids``, which end
    with the EOS when the completion stopped itself), not a re-tokenisation of the text."""
    funcs: list[Callable[..., list[float]]] = []
    for name in rewards.names:

        def call(
            prompts: Sequence[Any],
            completions: Sequence[Any],
            completion_ids: Sequence[Sequence[int]] | None = None,
            _name: str = name,
            **_: Any,
        ) -> list[float]:
            texts = [completion_text(c) for c in completions]
            counts = None if completion_ids is None else [generated_tokens(ids, eos_ids) for ids in completion_ids]
            return rewards.score(list(prompts), texts, [_name], token_counts=counts)[_name].tolist()

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
        stop_token_ids: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        check_trl_hook()
        super().__init__(*args, **kwargs)
        self._stop_on(stop_token_ids)
        self.surrogate = surrogate
        self.kl_controller = kl_controller
        self.groups_checked = 0
        self.advantages_verified = False
        self._last_surrogate: tuple[np.ndarray, int] | None = None  # (gathered surrogate (B,), group size)
        if len(self.reward_funcs) != len(surrogate.rewards.names) + 1:
            raise ValueError("reward_funcs must be the raw rewards followed by the surrogate slot")

    def _stop_on(self, ids: Sequence[int]) -> None:
        """End rollouts at ``ids`` as at the EOS (``sampling.stop``), in both of TRL's samplers.

        TRL takes its EOS ids from the model's generation config once, here: they stop HF
        ``generate`` and cut the completion mask after the first of them (so the stopping token
        is trained on and nothing after it). Adding the stops to TRL's copies, not to the model's
        config, keeps them out of every saved checkpoint: the served model ends where its
        requests say, not where this training's answers did. vLLM rollouts get them as
        ``stop_token_ids``, which keeps the token in the completion the same way.
        """
        if not ids:
            return
        eos: list[int] = list(self.eos_token_ids)  # type: ignore[has-type]  # TRL sets it, untyped
        self.eos_token_ids = [*eos, *(i for i in ids if i not in eos)]
        if self.use_vllm:
            self.vllm_generation.generation_kwargs["stop_token_ids"] = list(ids)
        else:
            self.generation_kwargs["eos_token_id"] = self.eos_token_ids
            self.generation_config.eos_token_id = self.eos_token_ids

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        gathered = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        rows = self._check_whole_groups(prompts, group)
        if rows != gathered.shape[0]:
            raise RuntimeError(f"TRL gathered {gathered.shape[0]} reward rows for {rows} gathered prompts")
        k = len(self.surrogate.rewards.names)
        raw = gathered[:, :k].detach().float().cpu().numpy()  # (B, K) raw rewards, whole groups
        sur = compute_surrogate(raw, self.surrogate, group)
        gathered[:, k] = torch.as_tensor(sur.rewards, dtype=gathered.dtype, device=gathered.device)
        self._last_surrogate = (gathered[:, k].detach().float().cpu().numpy(), group)
        metrics = self._metrics[mode]
        metrics["iama/objective"].append(sur.objective)
        for i, task in enumerate(self.surrogate.objective.tasks):
            label = task.name or f"task{i}"
            metrics[f"iama/R/{label}"].append(float(sur.group_values[:, i].mean()))
            metrics[f"iama/r/{label}"].append(float(sur.task_rewards[i].mean()))
        metrics["iama/surrogate_std"].append(float(np.std(sur.rewards)))
        metrics["iama/processes"].append(float(self.accelerator.num_processes))
        metrics["iama/groups_checked"].append(float(self.groups_checked))
        metrics["iama/advantages_verified"].append(float(self.advantages_verified))
        return gathered

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.advantages_verified and self._last_surrogate is not None:
            self._verify_advantages(out["advantages"])
        return out

    def _verify_advantages(self, advantages: torch.Tensor) -> None:
        """TRL's advantages for this process's rows == the normalised surrogate, or stop."""
        surrogate, group = self._last_surrogate  # type: ignore[misc]
        n = len(advantages)
        start = self.accelerator.process_index * n
        expected = expected_advantages(surrogate, group, str(self.scale_rewards))[start : start + n]
        actual = advantages.detach().float().cpu().numpy()
        if actual.shape != expected.shape or not np.allclose(actual, expected, rtol=1e-3, atol=1e-4):
            raise RuntimeError(
                "TRL's advantages are not the IAMA surrogate normalised by TRL's rule "
                f"(scale_rewards={self.scale_rewards}): max difference "
                f"{np.max(np.abs(actual - expected)) if actual.shape == expected.shape else 'shape'}; "
                "TRL changed how it forms advantages, and training would not optimise the IAMA objective"
            )
        self.advantages_verified = True

    def _check_whole_groups(self, prompts: list[Any], group: int) -> int:
        """Every group of the gathered batch must hold one prompt's completions only; returns
        the number of gathered rows."""
        from accelerate.utils import gather_object

        everyone = [json.dumps(p, sort_keys=True) for p in gather_object(list(prompts))]
        if len(everyone) % group:
            raise RuntimeError(f"gathered batch of {len(everyone)} is not whole groups of {group}")
        for g in range(0, len(everyone), group):
            if len(set(everyone[g : g + group])) != 1:
                raise RuntimeError("a group mixes prompts: completions of one prompt were split across processes")
        self.groups_checked += len(everyone) // group
        return len(everyone)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["beta"] = float(self.beta)  # the β in force for the steps being logged
        super().log(logs, start_time)
