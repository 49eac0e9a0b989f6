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
    STATE,
    AdaptiveBeta,
    CheckpointBookkeeping,
    JsonlMetrics,
    checkpoint_step,
    latest_complete_checkpoint,
)
from iama_trainer.config import TrainConfig

log = logging.getLogger("iama.trainer")

RUN_FILE = "run.json"


def prepare_output_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    out = cfg.output_dir
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise FileExistsError(f"{out} is not empty: pass --resume to continue it or --overwrite to start over")
    out.mkdir(parents=True, exist_ok=True)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig

    from iama_trainer.calibration import measure_reward_stats
    from iama_trainer.data import build_dataset
    from iama_trainer.grpo import IAMAGRPOTrainer, IAMASpec, check_trl_hook, reward_funcs
    from iama_trainer.kl_control import AdaptiveKLController

    check_trl_hook()
    cuda = torch.cuda.is_available()
    # On CPU, accelerate only forms a (gloo) process group when asked for cpu explicitly.
    state = PartialState(cpu=not cuda)
    if state.is_main_process:
        prepare_output_dir(cfg, resume, overwrite)
    state.wait_for_everyone()
    out = cfg.output_dir
    ckpt_root = out / "checkpoints"
    model_path = resolve_model(cfg.model) if state.is_main_process else None
    model_path = broadcast_object_list([model_path])[0]

    set_seed(cfg.seed)
    bf16 = cuda if cfg.bf16 == "auto" else bool(cfg.bf16)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = getattr(torch, weights_dtype(bf16, cfg.lora.enabled))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if cuda:
        model.to(state.device)

    rewards = RewardSet(bind_tokenizer(cfg.rewards, model_path))
    dataset = build_dataset(cfg.prompts)
    run_file = out / RUN_FILE
    stats: dict[str, RewardStats] | None = None
    if resume and run_file.is_file():
        stats = {k: RewardStats(**v) for k, v in json.loads(run_file.read_text())["reward_stats"].items()}
    elif cfg.normalization.enabled:
        if state.is_main_process:
            n = min(cfg.normalization.prompts, len(dataset))
            log.info("measuring reward statistics on %d base-model samples", n * cfg.normalization.samples_per_prompt)
            stats = measure_reward_stats(
                model,
                tokenizer,
                list(dataset["prompt"][:n]),
                rewards,
                cfg.normalization.samples_per_prompt,
                cfg.max_completion_length,
                cfg.temperature,
                cfg.top_p,
            )
        stats = broadcast_object_list([stats])[0]
    stats = stats or {}
    if state.is_main_process and not (resume and run_file.is_file()):
        atomic_write_json(
            run_file,
            {
                "config": json.loads(cfg.model_dump_json()),
                "reward_stats": {k: v.model_dump() for k, v in stats.items()},
            },
        )
    rewards = rewards.with_stats(stats)
    set_seed(cfg.seed)  # calibration consumed randomness on the main process only

    total = cfg.prompts_per_step * cfg.group_size
    if total % state.num_processes:
        raise ValueError(
            f"prompts_per_step × group_size = {total} must divide evenly over {state.num_processes} processes"
        )
    use_vllm = cfg.rollouts == "vllm" or (cfg.rollouts == "auto" and cuda and _has_vllm())
    if cfg.tensorboard:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    args = GRPOConfig(
        output_dir=str(ckpt_root),
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=total // state.num_processes,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_generations=cfg.group_size,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        scale_rewards=cfg.scale_rewards,
        loss_type=cfg.loss_type,
        max_grad_norm=cfg.max_grad_norm,
        reward_weights=[0.0] * len(rewards.names) + [1.0],
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
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        disable_tqdm=False,
        log_completions=False,
        shuffle_dataset=True,
    )
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
    controller = (
        AdaptiveKLController(cfg.beta, kl.target, kl.horizon, kl.min_beta, kl.max_beta)
        if kl.type == "adaptive"
        else None
    )
    if controller is not None and cfg.beta == 0:
        raise ValueError("adaptive KL control needs beta > 0 to start from")
    objective = Objective(tasks=cfg.objective.tasks, aggregation=cfg.objective.aggregation)
    spec = IAMASpec(rewards.names, objective, cfg.objective.type, dict(stats), controller)
    trainer = IAMAGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs(rewards),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        iama=spec,
    )
    trainer.add_callback(JsonlMetrics(out / "metrics.jsonl"))
    if controller is not None:
        trainer.add_callback(AdaptiveBeta(trainer))
    trainer.add_callback(CheckpointBookkeeping(trainer))

    resume_from = latest_complete_checkpoint(ckpt_root) if resume else None
    if resume and resume_from is None:
        log.warning("--resume: no complete checkpoint under %s; starting from step 0", ckpt_root)
    if resume_from is not None:
        saved = json.loads((resume_from / STATE).read_text())
        trainer.beta = saved["beta"]
        if controller is not None and saved.get("kl_controller"):
            controller.beta = saved["kl_controller"]["beta"]
        _drop_incomplete(ckpt_root, resume_from)
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    final = out / "model"
    if trainer.accelerator.is_main_process:
        _save_final(trainer, tokenizer, final, cfg, model_path, rewards, objective, peft_config is not None)
    trainer.accelerator.wait_for_everyone()
    return final


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


def _drop_incomplete(ckpt_root: Path, keep: Path) -> None:
    """Checkpoints newer than the one we resume from were torn by the interruption."""
    step = checkpoint_step(keep) or 0
    for p in ckpt_root.glob("checkpoint-*"):
        n = checkpoint_step(p)
        if n is not None and n > step:
            shutil.rmtree(p, ignore_errors=True)


def _save_final(
    trainer: Any,
    tokenizer: Any,
    final: Path,
    cfg: TrainConfig,
    model_path: str,
    rewards: RewardSet,
    objective: Objective,
    lora: bool,
) -> None:
    import trl

    model = trainer.accelerator.unwrap_model(trainer.model)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if lora and cfg.lora.merge:
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    history = trainer.state.log_history
    last_kl = next((h["kl"] for h in reversed(history) if h.get("kl") is not None), None)
    card = ModelCard(
        base_model=cfg.model if cfg.model != "default" else "SmolLM2-135M-Instruct (embedded default)",
        rewards={k: spec.model_copy(update={"stats": rewards.stats.get(k)}) for k, spec in cfg.rewards.items()},
        objective=objective,
        objective_type=cfg.objective.type,
        beta=float(trainer.beta),
        kl=last_kl,
        training={
            "steps": trainer.state.global_step,
            "group_size": cfg.group_size,
            "prompts_per_step": cfg.prompts_per_step,
            "learning_rate": cfg.learning_rate,
            "prompts": cfg.prompts.model_dump(),
            "lora": cfg.lora.model_dump() if lora else None,
            "seed": cfg.seed,
            "trl": trl.__version__,
            "base_model_path": model_path,
        },
    )
    save_model_card(card, tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    log.info("saved %s", final)
