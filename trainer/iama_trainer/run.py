"""One training run: load, calibrate rewards, train with TRL, save checkpoint + iama.json."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from iama.files import atomic_write_json
from iama.modelcard import ModelCard, save_model_card
from iama.models import resolve_model
from iama.objective import Objective
from iama.rewards import RewardSet, RewardStats, bind_tokenizer
from iama_trainer.callbacks import (
    SNAPSHOTS,
    STATE,
    AdaptiveBeta,
    CheckpointBookkeeping,
    JsonlMetrics,
    Snapshots,
    checkpoint_step,
    latest_complete_checkpoint,
    write_model_dir,
)
from iama_trainer.config import RUN_FILE, TrainConfig, import_function

log = logging.getLogger("iama.trainer")

METRICS_FILE = "metrics.jsonl"


def prepare_output_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    out = cfg.output_dir
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise FileExistsError(f"{out} is not empty: pass --resume to continue it or --overwrite to start over")
    out.mkdir(parents=True, exist_ok=True)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Processes → policy → reward statistics → GRPO arguments → trainer → resume → train → save."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    from transformers import set_seed

    from iama_trainer.data import build_dataset
    from iama_trainer.grpo import check_trl_hook
    from iama_trainer.launch import uses_deepspeed

    check_trl_hook()
    # Processes. On CPU, accelerate only forms a (gloo) process group when asked for cpu explicitly;
    # under DeepSpeed it must be told gloo before anything else builds the state, or it counts one
    # process (or drops DeepSpeed).
    cuda = torch.cuda.is_available()
    if not cuda and uses_deepspeed():
        state = PartialState(backend="gloo")
    else:
        state = PartialState(cpu=not cuda)
    if state.is_main_process:
        prepare_output_dir(cfg, resume, overwrite)
    state.wait_for_everyone()
    model_path = broadcast_object_list([resolve_model(cfg.model) if state.is_main_process else None])[0]

    # Policy.
    set_seed(cfg.seed)
    bf16 = cuda if cfg.bf16 == "auto" else bool(cfg.bf16)
    model, tokenizer = load_policy(model_path, bf16, cfg.lora.enabled, state.device if cuda else None)

    # Reward statistics: measured on the base model once, restored on --resume.
    dataset = build_dataset(cfg.prompts)
    rewards = RewardSet(bind_tokenizer(cfg.rewards, model_path))
    rewards = reward_statistics(cfg, rewards, model, tokenizer, list(dataset["prompt"]), resume, state)
    set_seed(cfg.seed)  # calibration consumed randomness on the main process only

    # GRPO arguments and the trainer.
    args = grpo_args(cfg, len(rewards.names), state.num_processes, bf16, cuda)
    trainer = build_trainer(cfg, model, tokenizer, dataset, rewards, args)

    # Resume point, then train.
    resume_from = resume_point(trainer, cfg.output_dir / "checkpoints", resume)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    final = cfg.output_dir / "model"
    # Every process takes part: under ZeRO-3 gathering the partitioned weights is collective.
    # (on the DeepSpeed engine, which holds the partitions: trainer.model_wrapped)
    zero3 = _zero3(trainer) and not cfg.lora.enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if zero3 else None
    if trainer.accelerator.is_main_process:
        _save_final(trainer, tokenizer, final, cfg, model_path, rewards, state_dict)
    trainer.accelerator.wait_for_everyone()
    return final


def load_policy(model_path: str, bf16: bool, lora: bool, device: Any) -> tuple[Any, Any]:
    """The model to train (weights in :func:`weights_dtype`) and its tokenizer (pad = EOS if unset)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, weights_dtype(bf16, lora)))
    if device is not None:
        model.to(device)
    return model, tokenizer


def reward_statistics(
    cfg: TrainConfig,
    rewards: RewardSet,
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    resume: bool,
    state: Any,
) -> RewardSet:
    """``rewards`` with the run's normalisation statistics, the one place they live from here on.

    A resumed run restores them from ``run.json`` (re-measuring would change the objective
    mid-run); a new run measures them on the base model's samples (main process, then
    broadcast) and records them, with the resolved config, in ``run.json``.
    """
    from accelerate.utils import broadcast_object_list

    from iama_trainer.calibration import measure_reward_stats

    run_file = cfg.output_dir / RUN_FILE
    if resume and run_file.is_file():
        saved = json.loads(run_file.read_text())["reward_stats"]
        return rewards.with_stats({k: RewardStats(**v) for k, v in saved.items()})
    stats: dict[str, RewardStats] = {}
    warnings: list[str] = []
    if cfg.normalization.enabled or cfg.normalization.record:
        if state.is_main_process:
            n = min(cfg.normalization.prompts, len(prompts))
            log.info("measuring reward statistics on %d base-model samples", n * cfg.normalization.samples_per_prompt)
            stats, warnings = measure_reward_stats(
                model,
                tokenizer,
                prompts[:n],
                rewards,
                cfg.normalization.samples_per_prompt,
                cfg.max_completion_length,
                cfg.sampling,
                normalized=cfg.normalization.enabled,
            )
        stats = broadcast_object_list([stats])[0]
    if state.is_main_process:
        atomic_write_json(
            run_file,
            {
                "config": json.loads(cfg.model_dump_json()),
                "reward_stats": {k: v.model_dump() for k, v in stats.items()},
                "reward_warnings": warnings,
            },
        )
    return rewards.with_stats(stats)


def grpo_args(cfg: TrainConfig, num_rewards: int, num_processes: int, bf16: bool, cuda: bool) -> Any:
    """Our config in TRL's terms (``GRPOConfig``)."""
    from trl import GRPOConfig

    total = cfg.prompts_per_step * cfg.group_size
    if total % num_processes:
        raise ValueError(f"prompts_per_step × group_size = {total} must divide evenly over {num_processes} processes")
    use_vllm = cfg.rollouts == "vllm" or (cfg.rollouts == "auto" and cuda and _has_vllm())
    return GRPOConfig(
        output_dir=str(cfg.output_dir / "checkpoints"),
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=total // num_processes,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_generations=cfg.group_size,
        max_completion_length=cfg.max_completion_length,
        **cfg.sampling.trl(),
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        scale_rewards=cfg.scale_rewards,
        multi_objective_aggregation="sum_then_normalize",  # explicit: the surrogate column is the reward
        loss_type=cfg.loss_type,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the steps (transformers 5)
        max_grad_norm=cfg.max_grad_norm,
        # The raw rewards are logged but weigh 0; the last column is the surrogate, filled in
        # after gathering by IAMAGRPOTrainer._calculate_rewards (grpo.py).
        reward_weights=[0.0] * num_rewards + [1.0],
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=not cuda,
        report_to=["tensorboard"] if cfg.tensorboard else [],
        use_vllm=use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_server_base_url=cfg.vllm_server_base_url,
        vllm_server_timeout=cfg.vllm_server_timeout,
        disable_tqdm=False,
        log_completions=False,
        shuffle_dataset=True,
    )


def build_trainer(cfg: TrainConfig, model: Any, tokenizer: Any, dataset: Any, rewards: RewardSet, args: Any) -> Any:
    """The IAMA trainer with its KL controller and callbacks (metrics, β, checkpoint markers)."""
    from iama_trainer.grpo import IAMAGRPOTrainer, reward_funcs
    from iama_trainer.kl_control import AdaptiveKLController
    from iama_trainer.sampling import eos_token_ids, stop_token_ids
    from iama_trainer.surrogate import SurrogateSpec

    peft_config = None
    if cfg.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    kl = cfg.kl_control
    controller = None
    if kl.type == "adaptive":
        if cfg.beta == 0:
            raise ValueError("adaptive KL control needs beta > 0 to start from")
        controller = AdaptiveKLController(cfg.beta, kl.target, kl.rate, kl.min_beta, kl.max_beta)
    objective = Objective(tasks=cfg.objective.tasks, aggregation=cfg.objective.aggregation)
    trainer = IAMAGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs(rewards, eos_token_ids(model.generation_config, tokenizer, cfg.sampling)),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        surrogate=SurrogateSpec(rewards, objective, cfg.objective.type, normalize=cfg.normalization.enabled),
        kl_controller=controller,
        stop_token_ids=stop_token_ids(tokenizer, cfg.sampling),
        rollout_func=import_function(cfg.rollout_func) if cfg.rollout_func else None,
    )
    _point_tensorboard_at(trainer, cfg.output_dir / "tensorboard")
    trainer.add_callback(JsonlMetrics(cfg.output_dir / METRICS_FILE))
    if controller is not None:
        trainer.add_callback(AdaptiveBeta(trainer))
    trainer.add_callback(CheckpointBookkeeping(trainer))
    if cfg.snapshot_steps:
        trainer.add_callback(Snapshots(trainer, tokenizer, cfg.output_dir / SNAPSHOTS, cfg.snapshot_steps))
    return trainer


def _point_tensorboard_at(trainer: Any, logdir: Path) -> None:
    """Write this run's TensorBoard events under its own output dir.

    transformers takes the directory from ``TENSORBOARD_LOGGING_DIR`` when the callback is made;
    setting that variable would leak into the next run of the same process (a sweep, the tests),
    whose events would land in the first run's directory."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(logdir)


def resume_point(trainer: Any, ckpt_root: Path, resume: bool) -> Path | None:
    """The last complete checkpoint (β and the controller restored from it), or None."""
    if not resume:
        return None
    resume_from = latest_complete_checkpoint(ckpt_root)
    if resume_from is None:
        log.warning("--resume: no complete checkpoint under %s; starting from step 0", ckpt_root)
        _drop_metrics_after(ckpt_root.parent / METRICS_FILE, 0)  # the aborted attempt's steps come again
        return None
    saved = json.loads((resume_from / STATE).read_text())
    trainer.beta = saved["beta"]
    if trainer.kl_controller is not None and saved.get("kl_controller"):
        trainer.kl_controller.beta = saved["kl_controller"]["beta"]
    _drop_incomplete(ckpt_root, resume_from)
    _drop_metrics_after(ckpt_root.parent / METRICS_FILE, checkpoint_step(resume_from) or 0)
    log.info("resuming from %s", resume_from)
    return resume_from


def weights_dtype(bf16: bool, lora: bool) -> str:
    """Storage dtype of the trained model's weights.

    ``bf16`` means autocast over fp32 master weights: AdamW steps of about ``lr`` applied to bf16
    weights mostly round away (measured on an H100, sentiment preset, lr 1e-5, 100 steps: KL to
    the reference 0.002 with bf16 weights vs 0.017 with fp32 ones). Only a LoRA run, whose base
    is frozen and whose adapters PEFT keeps in fp32, loads the base in bf16.
    """
    return "bfloat16" if bf16 and lora else "float32"


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _drop_metrics_after(path: Path, step: int) -> None:
    """Rows logged after the checkpoint we resume from will be logged again: drop them first,
    so that ``metrics.jsonl`` holds each step once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(f"{ln}\n" for ln in kept))
        os.replace(tmp, path)


def _drop_incomplete(ckpt_root: Path, keep: Path) -> None:
    """Checkpoints newer than the one we resume from were torn by the interruption."""
    step = checkpoint_step(keep) or 0
    for p in ckpt_root.glob("checkpoint-*"):
        n = checkpoint_step(p)
        if n is not None and n > step:
            shutil.rmtree(p, ignore_errors=True)


KL_WINDOW = 5


def final_kl(history: list[dict[str, Any]], window: int = KL_WINDOW) -> float | None:
    """The KL a run ended at: the mean of its last ``window`` logged estimates. One step's k3
    estimate on one batch is noisy (a run logged 0.168 at its last step and 0.107 averaged over
    its last 5), and the model card's KL is what runs are compared by."""
    kls = [float(h["kl"]) for h in history if h.get("kl") is not None][-window:]
    return sum(kls) / len(kls) if kls else None


def _zero3(trainer: Any) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def _save_final(
    trainer: Any,
    tokenizer: Any,
    final: Path,
    cfg: TrainConfig,
    model_path: str,
    rewards: RewardSet,
    state_dict: dict[str, Any] | None = None,
) -> None:
    import trl

    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora.enabled and cfg.lora.merge:
        model = model.merge_and_unload()
    history = trainer.state.log_history
    last_kl = final_kl(history)
    card = ModelCard(
        base_model=cfg.model if cfg.model != "default" else "SmolLM2-135M-Instruct (embedded default)",
        rewards={k: spec.model_copy(update={"stats": rewards.stats.get(k)}) for k, spec in cfg.rewards.items()},
        objective=trainer.surrogate.objective,
        objective_type=cfg.objective.type,
        beta=float(trainer.beta),
        kl=last_kl,
        training={
            "steps": trainer.state.global_step,
            "group_size": cfg.group_size,
            "prompts_per_step": cfg.prompts_per_step,
            "learning_rate": cfg.learning_rate,
            "prompts": cfg.prompts.model_dump(),
            "sampling": cfg.sampling.model_dump(mode="json"),  # what the answers looked like (stops)
            "lora": cfg.lora.model_dump() if cfg.lora.enabled else None,
            "seed": cfg.seed,
            "trl": trl.__version__,
            "base_model_path": model_path,
        },
    )
    write_model_dir(model, tokenizer, final, lambda tmp: save_model_card(card, tmp), state_dict)
    log.info("saved %s", final)
