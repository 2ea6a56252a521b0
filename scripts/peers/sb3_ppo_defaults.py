"""Peer benchmark: Stable-Baselines3 PPO with SB3's own defaults on any gymnasium env.

SB3 is NOT a dependency of rlfleet; it lives only in a separate venv (see README.md here;
MuJoCo envs also need `gymnasium[mujoco]` there).

Run as a fresh process from the repository root:

    /tmp/sb3venv/bin/python scripts/peers/sb3_ppo_defaults.py \
        --env HalfCheetah-v5 --seed 0 --steps 300000 --window 10

Hyperparameters are SB3's defaults, untouched: PPO("MlpPolicy", env, seed=seed,
device="cpu") on a single env from make_vec_env(env_id, n_envs=1, seed=seed)
(DummyVecEnv + Monitor). As read from the PPO signature of SB3 2.9.2: n_steps 2048,
batch_size 64, n_epochs 10, learning_rate 3e-4 (constant), gamma 0.99, gae_lambda 0.95,
clip_range 0.2, clip_range_vf None, normalize_advantage True (per-minibatch advantage
normalisation only), ent_coef 0.0, vf_coef 0.5, max_grad_norm 0.5, use_sde False,
target_kl None. MlpPolicy: separate pi/vf MLPs [64, 64], Tanh, orthogonal init,
log_std_init 0.0, Adam. No observation or reward normalisation (no VecNormalize), 1 env.

Trains with model.learn(total_timesteps=--steps), no early stop. SB3 only checks the
budget between rollouts, so env_steps is --steps rounded up to a multiple of n_steps
(2048), e.g. 300000 -> 301056.
Prints exactly one JSON line to stdout:

    {"peer": "sb3-ppo-defaults", "env": ID, "seed": S, "env_steps": N, "episodes": E,
     "final_return": mean return of the last --window finished training episodes,
     "best_return": the best such mean seen while training (checked at every episode end),
     "wall_s_in_process": seconds since the script's first statement}

final_return is the undiscounted return Monitor reports (info["episode"]["r"]); it is
null if no episode finished, and averages fewer than --window episodes if fewer finished.
A diagnostic JSON line (best last-window mean seen and the env step it occurred at)
goes to stderr.
"""

import time

T0: float = time.time()  # first statement: process-side timing starts here

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import gymnasium as gym  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from sb3_common import StopAtTarget  # noqa: E402

PEER: str = "sb3-ppo-defaults"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="gymnasium env id, e.g. HalfCheetah-v5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True, help="total_timesteps for model.learn")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE[:FUNC]",
                        help="import MODULE (and call FUNC) first, for envs that register that way "
                             "(minatar.gym:register_envs)")
    return parser.parse_args()


def import_envs(spec: str) -> None:
    """Import ``MODULE`` and call ``FUNC`` when given (``minatar.gym:register_envs``)."""
    import importlib

    module_name, _, func = spec.partition(":")
    module = importlib.import_module(module_name)
    if func:
        getattr(module, func)()


def main() -> None:
    args = parse_args()
    for spec in args.imports:
        import_envs(spec)

    env = make_vec_env(args.env, n_envs=1, seed=args.seed)
    # SB3's default policy for the observation: MultiInputPolicy is the one that takes a Dict.
    policy = "MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy"
    model = PPO(policy, env, seed=args.seed, device="cpu")
    # Used only to record episode returns: a target of +inf is never reached, so it never
    # stops training. Its deque keeps the last `window` returns.
    callback = StopAtTarget(target=math.inf, window=args.window)
    model.learn(total_timesteps=args.steps, callback=callback)

    returns = list(callback.returns)
    result = {
        "peer": PEER,
        "env": args.env,
        "seed": args.seed,
        "env_steps": int(model.num_timesteps),
        "episodes": callback.episodes,
        "final_return": round(sum(returns) / len(returns), 3) if returns else None,
        "best_return": callback.best_mean,
        "wall_s_in_process": round(time.time() - T0, 3),
    }
    print(json.dumps(result), flush=True)
    diagnostics = {"best_mean": callback.best_mean, "best_mean_env_step": callback.best_mean_step}
    print(json.dumps(diagnostics), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
