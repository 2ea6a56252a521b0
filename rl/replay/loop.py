"""The off-policy loop every replay-based algorithm trains through: fragments go into
replay, and a replay ratio's worth of gradient steps learn from it, one replay batch each.

An algorithm on it (DQN, SAC, TD3) supplies its module spec (``adapt_module_spec``), its
learner (the loss and its target networks, :class:`TargetNetworks`) and, where it acts
with a schedule, ``acting_weights``; the buffer, the ratio, prioritised replay and its
importance-sampling schedule live here once.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Iterator

import numpy as np
import torch
import tree
from gymnasium import spaces

from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.batch import concat_batches, num_rows, take_rows
from rlfleet.rl.checkpoint import CheckpointError
from rlfleet.rl.runners.env_runner import control_runner_factory
from rlfleet.rl.learner import Learner, TensorBatch, piecewise_linear
from rlfleet.rl.replay.buffer import ReplayBuffer
from rlfleet.rl.replay.config import OffPolicyConfig
from rlfleet.rl.replay.prioritized import PrioritizedReplayBuffer
from rlfleet.rl.replay.sequences import SequenceReplay
from rlfleet.rl.spaces import UnsupportedSpaceError


class OffPolicyAlgorithm(Algorithm):
    config: OffPolicyConfig
    runner_factory_class = control_runner_factory

    def setup(self) -> None:
        c = self.config
        self.update_budget = 0.0  # fractional gradient steps owed by the replay ratio
        if c.memory:  # whole sequences with their stored states (R2D2)
            self.buffer = SequenceReplay(c.buffer_size, max_seq_len=c.max_seq_len, burn_in=c.burn_in,
                                         lookahead=c.n_step - 1, seed=c.seed)
            return
        obs_space = self.module_spec.observation_space
        if c.frame_stack > 1:  # the env stacks frames; the buffer keeps one frame per step
            if not (len(obs_space.shape) >= 3 and obs_space.shape[0] == c.frame_stack):
                raise UnsupportedSpaceError(
                    f"frame_stack {c.frame_stack} needs observations stacked on the first axis, "
                    f"got shape {obs_space.shape} from env {self.module_spec.env_name!r}"
                )
            obs_space = spaces.Box(obs_space.low[-1], obs_space.high[-1], obs_space.shape[1:], obs_space.dtype)
        kwargs: dict[str, Any] = dict(
            num_streams=c.num_runners * c.num_envs_per_runner, n_step=c.n_step, gamma=c.gamma,
            frame_stack=c.frame_stack, seed=c.seed,
        )
        if c.prioritized_replay:
            self.buffer: ReplayBuffer = PrioritizedReplayBuffer(
                c.buffer_size, obs_space, self.module_spec.action_space,
                alpha=c.prioritized_replay_alpha, beta=c.prioritized_replay_beta, **kwargs,
            )
        else:
            self.buffer = ReplayBuffer(c.buffer_size, obs_space, self.module_spec.action_space, **kwargs)
        self.set_schedules()

    def set_schedules(self) -> None:
        """Importance-sampling annealing follows the env-step count."""
        c = self.config
        if c.prioritized_replay:
            self.buffer.beta = piecewise_linear(
                [(0, c.prioritized_replay_beta), (c.prioritized_replay_beta_timesteps, 1.0)], self.env_steps
            )

    def training_step(self) -> dict[str, float]:
        c = self.config
        fragments = self.sample()
        for frag in fragments:
            self.buffer.add(frag)
        metrics: dict[str, float] = {}
        if self.env_steps >= c.learning_starts and len(self.buffer) >= c.minibatch_size:
            self.update_budget += c.replay_ratio * sum(f.env_steps for f in fragments)
            steps = int(self.update_budget)
            self.update_budget -= steps
            metrics = self.learn(steps)
        self.set_schedules()
        self.sync_weights()
        metrics["replay/size"] = len(self.buffer)
        return metrics

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["replay_loop"] = {"update_budget": self.update_budget}
        if self.config.checkpoint_replay:
            state["replay"] = tree.map_structure(
                lambda x: torch.from_numpy(x) if isinstance(x, np.ndarray) else x, self.buffer.get_state())
        return state

    def restore_own_state(self, state: dict[str, Any], path: str) -> None:
        self.update_budget = float(state.get("replay_loop", {}).get("update_budget", 0.0))
        if not self.config.checkpoint_replay:
            return  # the buffer refills from the restored policy's fresh episodes
        if "replay" not in state:
            warnings.warn(f"checkpoint {path!r} holds no replay buffer (saved with checkpoint_replay off): "
                          "the buffer starts empty", stacklevel=2)
            return
        try:
            self.buffer.set_state(tree.map_structure(
                lambda x: x.numpy() if isinstance(x, torch.Tensor) else x, state["replay"]))
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path!r}: {e}") from None
        self.set_schedules()

    def learn(self, steps: int) -> dict[str, float]:
        """``steps`` gradient steps, each on its own replay batch; their mean metrics."""
        c = self.config
        sums: dict[str, float] = {}
        # Uniform sampling depends on nothing a step changes: up to 16 steps' batches are
        # drawn at once and learned from in one call (one round trip to remote learners
        # instead of one per step), a gradient step per batch. Prioritised sampling uses
        # the priorities the previous step left: one step per call.
        chunk = 1 if c.prioritized_replay else 16
        for start in range(0, steps, chunk):
            n = min(chunk, steps - start)
            batches = [self.buffer.sample(c.minibatch_size) for _ in range(n)]
            indices = np.concatenate([b.pop("indices") for b in batches])
            result = self.learner_group.update(concat_batches(batches, axis=0), env_steps=self.env_steps)
            if c.prioritized_replay:
                self.buffer.update_priorities(indices, result.per_row["td_abs"])
            for k, v in result.metrics.items():
                sums[k] = sums.get(k, 0.0) + v * n
        metrics = {k: v / steps for k, v in sums.items()} if steps else {}
        metrics["learner/num_grad_steps"] = steps  # the iteration's, over every call
        return metrics


class OffPolicyLearner(Learner):
    """A learner on replay batches: one gradient step per batch of ``minibatch_size``
    rows (the loop hands it one or more, one after the other, each already a random
    sample), this learner taking its equal, contiguous part of each. Subclasses name
    their target networks in :meth:`make_targets` and get the updates (every
    ``target_update_interval`` steps by ``tau``), the copy at distributed start-up and
    the checkpointing."""

    config: OffPolicyConfig

    def __init__(self, *, module_spec: Any, config: OffPolicyConfig, rank: int = 0) -> None:
        super().__init__(module_spec=module_spec, config=config, rank=rank)
        online = self.make_targets()
        self.targets = {name: copy.deepcopy(net).requires_grad_(False) for name, net in online.items()}
        # (target, online) tensor pairs, listed once: walking both state dicts cost more
        # than the lerp at every step of SAC's soft updates. Loading state copies into
        # these same tensors, so the pairs stay valid.
        self._target_pairs = [(t, o) for name, target in self.targets.items()
                              for t, o in zip(target.state_dict().values(), online[name].state_dict().values())]
        self.num_grad_steps = 0
        # Noise a loss draws (SAC's actions, TD3's target smoothing) is drawn for the whole
        # replay batch by every learner, each taking its rows' part: N learners draw what
        # one learner would, and a restore goes on with the same draws.
        self.noise = torch.Generator(self.device).manual_seed(config.seed)

    def batch_noise(self, rows: int, dim: int) -> torch.Tensor:
        """Standard normal noise (rows, dim) for this learner's ``rows`` of a replay batch."""
        full = torch.randn(rows * self.world_size, dim, generator=self.noise, device=self.device)
        return full[self.rank * rows : (self.rank + 1) * rows]

    def make_targets(self) -> dict[str, torch.nn.Module]:
        """{name: online network} for every network with a target copy."""
        return {"module": self.module}

    def minibatches(self, data: TensorBatch) -> Iterator[TensorBatch]:
        size = self.config.minibatch_rows(self.config.minibatch_size)  # with memory, whole sequences
        part = size // self.world_size
        for start in range(0, num_rows(data) - size + 1, size):
            yield take_rows(data, slice(start + self.rank * part, start + (self.rank + 1) * part))

    def gradient_step(self, minibatch: TensorBatch) -> dict[str, torch.Tensor]:
        metrics = super().gradient_step(minibatch)
        self.num_grad_steps += 1
        if self.num_grad_steps % self.config.target_update_interval == 0:
            self.update_targets(self.config.tau)
        return metrics

    def setup_distributed(self, rank: int, world_size: int, address: str, port: int, backend: str) -> None:
        super().setup_distributed(rank, world_size, address, port, backend)
        self.update_targets(1.0)  # the targets start as rank 0's online networks everywhere

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """target <- tau * online + (1 - tau) * target, for every target network."""
        for t, o in self._target_pairs:
            t.copy_(o) if tau == 1.0 or not t.is_floating_point() else t.lerp_(o, tau)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["targets"] = {name: {k: v.detach().cpu().clone() for k, v in target.state_dict().items()}
                            for name, target in self.targets.items()}
        state["num_grad_steps"] = self.num_grad_steps
        state["noise"] = self.noise.get_state()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        # (checkpoints before the shared loop hold DQN's one target as "target")
        saved = state["targets"] if "targets" in state else {"module": state["target"]}
        for name, target in self.targets.items():
            target.load_state_dict(saved[name])
        self.num_grad_steps = int(state["num_grad_steps"])
        if "noise" in state:  # (checkpoints before the shared loop have none)
            self.noise.set_state(state["noise"])
