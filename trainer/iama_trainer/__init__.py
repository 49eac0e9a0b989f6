"""IAMA trainer: non-linear GRPO on TRL's GRPOTrainer, producing meta-aligned checkpoints."""
