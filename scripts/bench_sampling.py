"""Sampling speed of one local env runner against the bare loop (``python scripts/bench.py sampling``).

The reference is the least a sampler of this task can do per step, written plainly:
gymnasium's ``SyncVectorEnv`` of the same B envs (same-step autoreset, as ours), the
observation as a tensor, a 64x64 tanh actor and critic forward under ``inference_mode``,
an action drawn from the logits with its log-probability, the step, and the fragment's
arrays filled in place. No contract checks, no episode bookkeeping, no connectors.

Ours is ``EnvRunner.sample()`` of the library's PPO on the same env with the same widths
and the initial policy. Both run in this process with one torch thread, alternating per
repeat (each gets a warm-up fragment first); reported are env steps/s per repeat, the
medians, and ours as a share of the bare loop's median.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn


class BareLoop:
    """The reference sampler (module docstring); ``sample()`` fills one T x B fragment."""

    def __init__(self, env: str, num_envs: int, fragment_length: int, seed: int) -> None:
        self.env = gym.vector.SyncVectorEnv([lambda: gym.make(env)] * num_envs,
                                            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        obs_dim = int(np.prod(self.env.single_observation_space.shape))
        n = int(self.env.single_action_space.n)
        self.actor = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, n))
        self.critic = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.T, self.B = fragment_length, num_envs
        self.obs, _ = self.env.reset(seed=seed)
        shape = (self.T, self.B)
        self.buf_obs = np.zeros(shape + self.obs.shape[1:], self.obs.dtype)
        self.buf = {k: np.zeros(shape, np.float32) for k in ("rewards", "logp", "values")}
        self.buf_actions = np.zeros(shape, np.int64)
        self.buf_done = np.zeros(shape, bool)

    @torch.inference_mode()
    def sample(self) -> int:
        for t in range(self.T):
            self.buf_obs[t] = self.obs
            x = torch.from_numpy(self.obs)
            logits = self.actor(x)
            value = self.critic(x)
            logp_all = torch.log_softmax(logits, -1)
            action = torch.multinomial(logp_all.exp(), 1)
            self.buf["logp"][t] = logp_all.gather(-1, action).squeeze(-1).numpy()
            self.buf["values"][t] = value.squeeze(-1).numpy()
            a = action.squeeze(-1).numpy()
            self.buf_actions[t] = a
            self.obs, reward, term, trunc, _ = self.env.step(a)
            self.buf["rewards"][t] = reward
            self.buf_done[t] = term | trunc
        return self.T * self.B


class Ours:
    def __init__(self, env: str, num_envs: int, fragment_length: int, seed: int, memory: str | None = None) -> None:
        from rlfleet.algorithms.ppo import PPOConfig
        from rlfleet.rl.runners.env_runner import EnvRunnerFactory

        config = PPOConfig(env=env, seed=seed, num_envs_per_runner=num_envs, rollout_fragment_length=fragment_length,
                           memory=memory)
        self.runner = EnvRunnerFactory(config)(0)

    def sample(self) -> int:
        return self.runner.sample().env_steps


def rate(sampler: Any, seconds: float) -> float:
    """Env steps/s over whole fragments for at least ``seconds``."""
    steps, t0 = 0, time.perf_counter()
    while True:
        steps += sampler.sample()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return steps / elapsed


def main(args: Any) -> None:
    torch.set_num_threads(1)
    samplers = {"bare loop": BareLoop(args.env, args.num_envs, args.fragment_length, 0),
                "rlfleet EnvRunner": Ours(args.env, args.num_envs, args.fragment_length, 0)}
    if args.memory:  # the same runner acting through a recurrent core of the default 128 units
        for kind in ("gru", "lstm"):
            samplers[f"rlfleet {kind}"] = Ours(args.env, args.num_envs, args.fragment_length, 0, memory=kind)
    for sampler in samplers.values():
        sampler.sample()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in samplers}
    for rep in range(args.repeats):
        order = list(samplers) if rep % 2 == 0 else list(reversed(samplers))  # neither always first
        for name in order:
            rates[name].append(rate(samplers[name], args.seconds))
        print(f"repeat {rep}: " + ", ".join(f"{name} {rates[name][-1]:8.0f}" for name in samplers) + " env steps/s",
              flush=True)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    bare, ours = medians["bare loop"], medians["rlfleet EnvRunner"]
    print(f"{args.env}, {args.num_envs} envs x {args.fragment_length} steps, one torch thread, medians of "
          f"{args.repeats}: bare loop {bare:.0f} env steps/s [{min(rates['bare loop']):.0f}, "
          f"{max(rates['bare loop']):.0f}], rlfleet {ours:.0f} [{min(rates['rlfleet EnvRunner']):.0f}, "
          f"{max(rates['rlfleet EnvRunner']):.0f}]: {ours / bare:.2f} of the bare loop")
    for kind in ("gru", "lstm") if args.memory else ():
        name = f"rlfleet {kind}"
        print(f"memory: {kind} (128 units) {medians[name]:.0f} env steps/s [{min(rates[name]):.0f}, "
              f"{max(rates[name]):.0f}]: {medians[name] / ours:.2f} of the MLP runner's")
