"""The settings every LM post-training algorithm shares (GRPO, LM-PPO).

They extend the common base only: none of control RL's env-runner or MLP fields
(``hidden_sizes``, ``num_envs_per_runner``, ``normalize_obs``, ...), which would mean
nothing here; such a key is an error naming the closest valid one.
"""

from __future__ import annotations

import dataclasses

from rlfleet.rl.config import AlgorithmConfig, ConfigError


@dataclasses.dataclass
class LMConfig(AlgorithmConfig):
    action_space_types = ()  # acts in token space, not in a gymnasium action space

    env: object = "text-addition"
    """A text env name (``envs.text_tasks`` registry) or an ``envs.text.TextEnvSpec`` (Python API:
    your own prompts, tokenizer and reward function or reward model)."""
    prompts_per_runner: int = 16
    """Prompts each generator runner draws per sample call."""
    group_size: int = 2
    """Completions per prompt, consecutive rows of a batch (a group's advantages are
    computed on one learner, from all of it)."""
    temperature: float = 1.0
    """Sampling temperature of the generators."""
    top_k: int | None = None
    """Sample among the k most likely tokens only (None: all)."""
    clip_param: float = 0.2
    """Clip range of the per-token probability ratio."""
    kl_coef: float = 0.04
    """Weight of the KL to the frozen reference; 0 skips the reference model."""
    reference_in_runners: bool = False
    """Compute the frozen reference's log-probs in the generator runners, right after
    generating (the runners in parallel, and off the learner's path when rollouts are
    async), instead of in the learner. Worth it with runner actors when the learner is the
    bottleneck and the runners have time to spare (small models on CPU); with the runner
    in the driver's process it only moves the work. Each runner then holds a second copy
    of the model, and every broadcast carries the reference's weights too."""
    num_epochs: int = 1
    """Passes over each batch of completions."""
    minibatch_size: int = 64
    """Completions per gradient step."""
    lr: float = 3e-4
    """AdamW learning rate of the RL phase."""
    weight_decay: float = 0.01
    """Decoupled weight decay of the policy's AdamW."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this; None disables."""
    hf_model: str | None = None
    """A local Hugging Face causal-LM directory to post-train instead of the built-in GPT
    (``pip install '.[hf]'``; nothing is downloaded). A named text env then speaks the
    model's tokenizer (from the same directory, or ``hf_tokenizer``)."""
    hf_tokenizer: str | None = None
    """A local Hugging Face tokenizer directory for a named text env (default: the
    ``hf_model`` directory; neither: the env's own character tokenizer)."""
    n_layer: int = 2
    """Transformer blocks of the policy."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 64
    """Width of the policy."""
    warmup_steps: int = 600
    """Supervised steps on the task's examples before RL (cached in the logdir)."""
    warmup_lr: float = 3e-3
    """Adam learning rate of the supervised warm-up."""
    warmup_batch_size: int = 64
    """Examples per supervised step."""
    evaluation_num_episodes: int = 200
    """Prompts answered greedily by ``evaluate()``."""
    async_rollouts: bool = False
    """Generator runners keep generating while the learner trains: each runner is asked
    for its next batch as soon as it returns one, with the newest published weights
    (IMPALA's in-flight requests); the learner trains on what has arrived."""
    max_staleness: int = 1
    """Asynchronous rollouts: completions sampled with weights more than this many
    versions behind the learner's are dropped (and counted in ``num_stale_completions``)."""
    weight_sync_timeout_s: float | None = 120.0
    """Every generator runner takes each new policy within this, or the run ends with
    one line naming the runner (never a silent hang); with ``async_rollouts`` runners
    take it with their next request, bounded by ``sample_timeout_s``."""

    def validate(self) -> None:
        super().validate()
        self.require_positive("prompts_per_runner", "group_size", "num_epochs", "minibatch_size", "n_layer", "n_head",
                              "n_embd", "warmup_batch_size", "clip_param")
        self.require_non_negative("kl_coef", "warmup_steps", "max_staleness")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} must divide by n_head {self.n_head}")
        n = max(1, self.num_learners)
        if self.minibatch_size % n:
            raise ConfigError(f"minibatch_size {self.minibatch_size} must divide by num_learners {n}: "
                              "each learner takes an equal part of every minibatch")
