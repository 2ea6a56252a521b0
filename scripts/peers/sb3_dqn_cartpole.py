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

import sys  # noqa: E402

from stable_baselines3 import DQN  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from sb3_common import StopAtTarget, parse_args, report  # noqa: E402

RL_ZOO_N_TIMESTEPS: int = 50_000
RL_ZOO_EXPLORATION_FRACTION: float = 0.16
EPSILON_END_STEP: int = round(RL_ZOO_EXPLORATION_FRACTION * RL_ZOO_N_TIMESTEPS)  # 8000


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.max_steps < EPSILON_END_STEP:
        sys.exit(f"--max-steps must be >= {EPSILON_END_STEP} (end of rl-zoo's epsilon decay)")

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

    report("sb3-dqn", args, model, callback, T0)


if __name__ == "__main__":
    main()
