"""GRPO (group-relative policy optimisation) for language-model post-training."""
