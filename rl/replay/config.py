"""The settings every replay-based algorithm shares (DQN, SAC, TD3): the buffer, how
often it is learned from, and target networks. Imports no torch (``--algo dqn --help``)."""

from __future__ import annotations

import dataclasses

from rlfleet.rl.config import ConfigError, ControlConfig


@dataclasses.dataclass
class OffPolicyConfig(ControlConfig):
    """Settings of the shared off-policy loop (``rl/replay/loop.py``)."""

    multi_agent = False  # replay would need a buffer per policy (issue 36)
    renamed = {"train_batch_size": "minibatch_size"}  # one name for rows per gradient step

    # Replay steps short fragments, its rewards are not rescaled, and its observations are
    # not normalised: a stored observation must mean the same thing when it is sampled
    # a hundred thousand steps later, under statistics that have moved since.
    family_defaults = {family: ControlConfig.family_defaults["discrete"] for family in ControlConfig.family_defaults}

    buffer_size: int = 50_000
    """Transitions the replay buffer holds."""
    learning_starts: int = 1_000
    """Env steps collected before the first gradient step."""
    minibatch_size: int = 64
    """Rows per gradient step, drawn from the buffer (PPO's name for the same thing; SB3's
    ``batch_size``). It was ``train_batch_size``, which in PPO means rows per iteration."""
    replay_ratio: float = 0.5
    """Gradient steps per env step, whatever the number of runners (SB3's ``gradient_steps
    / train_freq``)."""
    target_update_interval: int = 500
    """Gradient steps between target-network updates."""
    tau: float = 1.0
    """Target update: target <- tau * online + (1 - tau) * target; 1.0 is a hard copy."""
    n_step: int = 1
    """Steps summed in the return before bootstrapping."""
    prioritized_replay: bool = False
    """Sample transitions by TD error (Schaul et al. 2016)."""
    prioritized_replay_alpha: float = 0.6
    """How strongly priorities skew sampling (0 is uniform)."""
    prioritized_replay_beta: float = 0.4
    """Initial importance-sampling exponent, annealed linearly to 1."""
    prioritized_replay_beta_timesteps: int = 100_000
    """Env steps over which beta reaches 1."""
    frame_stack: int = 1
    """Frames stacked in each observation by the env; the buffer stores single frames."""
    checkpoint_replay: bool = False
    """Put the replay buffer into every checkpoint, so that a resumed run samples what an
    uninterrupted one would (costs the buffer's size on disk per checkpoint: 1M
    transitions of 17 floats are about 80 MB). Off: a resumed run refills the buffer."""

    def validate(self) -> None:
        super().validate()
        self.require_positive("buffer_size", "minibatch_size", "target_update_interval", "n_step", "frame_stack",
                              "prioritized_replay_beta_timesteps", "replay_ratio")
        self.require_non_negative("learning_starts")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        if self.minibatch_size > self.buffer_size:
            raise ConfigError(f"minibatch_size {self.minibatch_size} > buffer_size {self.buffer_size}")
        if self.minibatch_rows(self.minibatch_size) % max(1, self.num_learners):
            raise ConfigError(f"minibatch_size {self.minibatch_size} ({self.minibatch_rows(self.minibatch_size)} rows) "
                              f"must divide by num_learners {self.num_learners}: each learner takes an equal part of "
                              "every replay batch")
        if self.memory:  # sequences (rl/replay/sequences.py): uniform, single frames stacked by the core
            for key, off in (("prioritized_replay", False), ("frame_stack", 1)):
                if getattr(self, key) != off:
                    raise ConfigError(f"{key} is not built for replay with memory yet; leave it at {off}")


@dataclasses.dataclass
class ActorCriticReplayConfig(OffPolicyConfig):
    """What SAC and TD3 share (SB3's and CleanRL's settings for both): 256x256 ReLU
    networks, lr 3e-4, batches of 256 from a 1M buffer, a gradient step per env step, soft
    target updates, no gradient clipping."""

    # One env per runner, 64 steps per sample call: a gradient step per env step (replay
    # ratio 1) as in SB3 and CleanRL, with weights broadcast every 64 steps rather than
    # every step (the broadcast costs more than a step's acting).
    family_defaults = {family: {**ControlConfig.family_defaults["discrete"], "num_envs_per_runner": 1,
                                "rollout_fragment_length": 64} for family in ControlConfig.family_defaults}

    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    lr: float = 3e-4
    grad_clip: float | None = None
    buffer_size: int = 1_000_000
    learning_starts: int = 1_000
    minibatch_size: int = 256
    replay_ratio: float = 1.0
    target_update_interval: int = 1
    tau: float = 0.005
