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

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from sb3_common import StopAtTarget, parse_args, report  # noqa: E402


def linear_schedule(initial: float):
    """rl-zoo 'lin_<x>': lr = progress_remaining * initial (1 -> 0 over total_timesteps)."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

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

    report("sb3", args, model, callback, T0)


if __name__ == "__main__":
    main()
