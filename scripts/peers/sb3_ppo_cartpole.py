"""Peer benchmark: Stable-Baselines3 PPO on CartPole-v1 (time/steps to a target return).

SB3 is NOT a dependency of rlfleet; it lives only in a separate venv (see README.md here).

Run as a fresh process from the repository root:

    /tmp/sb3venv/bin/python scripts/peers/sb3_ppo_cartpole.py \
        --seed 0 --target 450 --window 20 --max-steps 200000

Hyperparameters are the rl-zoo tuned ones for PPO/CartPole-v1: 8 envs (DummyVecEnv),
n_steps 32, batch_size 256, n_epochs 20, gamma 0.98, gae_lambda 0.8, ent_coef 0.0,
learning rate linear from 1e-3 to 0 (over --max-steps), MlpPolicy, device cpu.

Training stops as soon as the mean return of the last --window finished episodes is
>= --target (checked after every vectorised env step) or after --max-steps env steps.
Prints exactly one JSON line to stdout:

    {"peer": "sb3", "seed": S, "reached": bool, "env_steps": N, "episodes": E,
     "wall_s_in_process": seconds since the script's first statement}
"""

import time

T0: float = time.time()  # first statement: process-side timing starts here

import argparse  # noqa: E402
import json  # noqa: E402
from collections import deque  # noqa: E402

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402


class StopAtTarget(BaseCallback):
    """Stop training once the mean of the last `window` episode returns is >= `target`."""

    def __init__(self, target: float, window: int) -> None:
        super().__init__(verbose=0)
        self.target = target
        self.window = window
        self.returns: deque[float] = deque(maxlen=window)
        self.episodes = 0
        self.reached = False

    def _on_step(self) -> bool:
        # make_vec_env wraps each env in Monitor, which adds info["episode"] on episode end.
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                self.returns.append(float(episode["r"]))
                self.episodes += 1
        if len(self.returns) >= self.window and sum(self.returns) / self.window >= self.target:
            self.reached = True
            return False  # stops model.learn()
        return True


def linear_schedule(initial: float):
    """rl-zoo 'lin_<x>': lr = progress_remaining * initial (1 -> 0 over total_timesteps)."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=450.0)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=200_000)
    args = parser.parse_args()

    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed, vec_env_cls=DummyVecEnv)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gamma=0.98,
        gae_lambda=0.8,
        ent_coef=0.0,
        learning_rate=linear_schedule(1e-3),
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    callback = StopAtTarget(args.target, args.window)
    model.learn(total_timesteps=args.max_steps, callback=callback)

    result = {
        "peer": "sb3",
        "seed": args.seed,
        "reached": callback.reached,
        "env_steps": int(model.num_timesteps),
        "episodes": callback.episodes,
        "wall_s_in_process": round(time.time() - T0, 3),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
