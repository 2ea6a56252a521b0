"""Peer benchmark: Stable-Baselines3 DQN on CartPole-v1 (time/steps to a target return).

SB3 is NOT a dependency of rlfleet; it lives only in a separate venv (see README.md here).

Run as a fresh process from the repository root:

    /tmp/sb3venv/bin/python scripts/peers/sb3_dqn_cartpole.py \
        --seed 0 --target 450 --window 20 --max-steps 200000

Hyperparameters are the rl-zoo tuned ones for DQN/CartPole-v1: 1 env (DummyVecEnv),
MlpPolicy with net_arch [256, 256], learning_rate 2.3e-3 (constant), batch_size 64,
buffer_size 100000, learning_starts 1000, gamma 0.99, target_update_interval 10,
train_freq 256, gradient_steps 128, exploration_fraction 0.16, exploration_final_eps
0.04, device cpu. rl-zoo trains for n_timesteps 5e4.

Exploration schedule: SB3 ties epsilon to the fraction of `total_timesteps` elapsed
(epsilon goes linearly from 1.0 to exploration_final_eps over the first
`exploration_fraction * total_timesteps` env steps). rl-zoo uses total_timesteps 5e4, so
epsilon bottoms out at 0.16 * 5e4 = 8000 env steps. We pass total_timesteps = --max-steps
(so training can run longer than 5e4 steps) and rescale the fraction to
8000 / --max-steps, which keeps epsilon's schedule identical to rl-zoo's. The learning
rate is constant, so nothing else depends on total_timesteps.

Training stops as soon as the mean return of the last --window finished episodes is
>= --target (checked after every env step) or after --max-steps env steps.
Prints exactly one JSON line to stdout:

    {"peer": "sb3-dqn", "seed": S, "reached": bool, "env_steps": N, "episodes": E,
     "wall_s_in_process": seconds since the script's first statement}

A diagnostic JSON line (best last-window mean seen and the env step it occurred at)
goes to stderr.
"""

import time

T0: float = time.time()  # first statement: process-side timing starts here

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections import deque  # noqa: E402

from stable_baselines3 import DQN  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

RL_ZOO_N_TIMESTEPS: int = 50_000
RL_ZOO_EXPLORATION_FRACTION: float = 0.16
EPSILON_END_STEP: int = round(RL_ZOO_EXPLORATION_FRACTION * RL_ZOO_N_TIMESTEPS)  # 8000


class StopAtTarget(BaseCallback):
    """Stop training once the mean of the last `window` episode returns is >= `target`."""

    def __init__(self, target: float, window: int) -> None:
        super().__init__(verbose=0)
        self.target = target
        self.window = window
        self.returns: deque[float] = deque(maxlen=window)
        self.episodes = 0
        self.reached = False
        self.best_mean: float | None = None  # best last-`window` mean seen (diagnostic)
        self.best_mean_step = 0

    def _on_step(self) -> bool:
        # make_vec_env wraps each env in Monitor, which adds info["episode"] on episode end.
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                self.returns.append(float(episode["r"]))
                self.episodes += 1
                if len(self.returns) >= self.window:
                    mean = sum(self.returns) / self.window
                    if self.best_mean is None or mean > self.best_mean:
                        self.best_mean = mean
                        self.best_mean_step = self.num_timesteps
                    if mean >= self.target:
                        self.reached = True
                        return False  # stops model.learn()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=450.0)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=200_000)
    args = parser.parse_args()
    if args.max_steps < EPSILON_END_STEP:
        parser.error(f"--max-steps must be >= {EPSILON_END_STEP} (end of rl-zoo's epsilon decay)")

    env = make_vec_env("CartPole-v1", n_envs=1, seed=args.seed, vec_env_cls=DummyVecEnv)
    model = DQN(
        "MlpPolicy",
        env,
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1000,
        gamma=0.99,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=EPSILON_END_STEP / args.max_steps,  # == 0.16 of 5e4 steps
        exploration_final_eps=0.04,
        policy_kwargs=dict(net_arch=[256, 256]),
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    callback = StopAtTarget(args.target, args.window)
    model.learn(total_timesteps=args.max_steps, callback=callback)

    result = {
        "peer": "sb3-dqn",
        "seed": args.seed,
        "reached": callback.reached,
        "env_steps": int(model.num_timesteps),
        "episodes": callback.episodes,
        "wall_s_in_process": round(time.time() - T0, 3),
    }
    print(json.dumps(result), flush=True)
    diagnostics = {"best_mean": callback.best_mean, "best_mean_env_step": callback.best_mean_step}
    print(json.dumps(diagnostics), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
