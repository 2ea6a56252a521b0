"""Peer benchmark: Stable-Baselines3 SAC with SB3's own defaults on any gymnasium env.

SB3 is NOT a dependency of rlfleet; it lives only in a separate venv (see README.md here;
MuJoCo envs also need `gymnasium[mujoco]` there, Box2D ones `gymnasium[box2d]`).

Run as a fresh process from the repository root:

    /tmp/sb3venv/bin/python scripts/peers/sb3_sac.py --env Pendulum-v1 --seed 0 --steps 20000

Hyperparameters are SB3's defaults, untouched: SAC("MlpPolicy", env, seed=seed,
device="cpu") on a single env from make_vec_env(env_id, n_envs=1, seed=seed)
(DummyVecEnv + Monitor). As read from the SAC signature of SB3 2.9.2: learning_rate 3e-4
(constant, actor, critics and temperature alike), buffer_size 1_000_000,
learning_starts 100 (uniformly random actions before that), batch_size 256, tau 0.005,
gamma 0.99, train_freq 1 and gradient_steps 1 (one gradient step per env step once
learning has started), n_steps 1, ent_coef "auto" (learned temperature, starting at 1.0),
target_entropy "auto" (-dim(A)), target_update_interval 1, no action noise, use_sde
False. MlpPolicy (SACPolicy): net_arch None -> [256, 256] for the actor and each of the
n_critics 2 Q-networks, ReLU, no shared features extractor, Adam. No observation or
reward normalisation, 1 env.

Trains with model.learn(total_timesteps=--steps), no early stop; SAC steps one env step
at a time, so env_steps is exactly --steps and the number of gradient steps is
--steps - learning_starts (19_900 for 20_000 steps). Then the greedy policy
(model.predict(deterministic=True): the tanh of the Gaussian's mean) plays 10 episodes
on a fresh env, the first reset seeded with seed + 10_000 so evaluation never replays a
training start.

Prints exactly one JSON line to stdout:

    {"peer": "sb3-sac", "env": ID, "seed": S, "env_steps": N,
     "eval_return": mean undiscounted return of the 10 greedy episodes,
     "final_return": mean return of the last --window finished training episodes,
     "wall_s_in_process": seconds since the script's first statement,
     "train_s": seconds in model.learn, "grad_steps": gradient steps taken}

final_return is the undiscounted return Monitor reports (info["episode"]["r"]); it is
null if no episode finished, and averages fewer than --window episodes if fewer finished.
"""

import time

T0: float = time.time()  # first statement: process-side timing starts here

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import gymnasium as gym  # noqa: E402
from stable_baselines3 import SAC  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from sb3_common import StopAtTarget  # noqa: E402

PEER: str = "sb3-sac"
EVAL_EPISODES: int = 10
EVAL_SEED_OFFSET: int = 10_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="gymnasium env id, e.g. Pendulum-v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True, help="total_timesteps for model.learn")
    parser.add_argument("--window", type=int, default=10, help="final_return: mean of the last N training episodes")
    return parser.parse_args()


def greedy_return(model: SAC, env_id: str, seed: int, episodes: int) -> float:
    """Mean undiscounted return of the deterministic policy over ``episodes`` episodes of
    a fresh env (not the training env: its Monitor and episode counters stay untouched)."""
    env = gym.make(env_id)
    returns = []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        obs, _ = env.reset()  # the env's own RNG, seeded once above, carries on
    env.close()
    return sum(returns) / len(returns)


def main() -> None:
    args = parse_args()
    env = make_vec_env(args.env, n_envs=1, seed=args.seed)
    model = SAC("MlpPolicy", env, seed=args.seed, device="cpu")
    # Used only to record episode returns: a target of +inf is never reached, so it never
    # stops training. Its deque keeps the last `window` returns.
    callback = StopAtTarget(target=math.inf, window=args.window)
    t_learn = time.time()
    model.learn(total_timesteps=args.steps, callback=callback)
    train_s = time.time() - t_learn

    eval_return = greedy_return(model, args.env, args.seed + EVAL_SEED_OFFSET, EVAL_EPISODES)
    returns = list(callback.returns)
    result = {
        "peer": PEER,
        "env": args.env,
        "seed": args.seed,
        "env_steps": int(model.num_timesteps),
        "eval_return": round(eval_return, 3),
        "final_return": round(sum(returns) / len(returns), 3) if returns else None,
        "wall_s_in_process": round(time.time() - T0, 3),
        "train_s": round(train_s, 3),
        "grad_steps": int(model._n_updates),  # SAC.train adds gradient_steps to it per call
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
