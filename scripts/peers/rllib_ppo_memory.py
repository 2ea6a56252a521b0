"""RLlib's PPO on CartPole-v1 with 2 env runners: the reference of ``bench.py memory``.

Builds ``PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=2)`` on RLlib's
default (new) API stack with nothing else changed: one local learner in this process
(``num_learners=0``), two ``SingleAgentEnvRunner`` actors of one CPU each, one env per
runner, RLlib's default PPO hyperparameters. Ray is started embedded with ``num_cpus=2``
(the two runners; a local learner asks Ray for nothing when the algorithm is built
directly rather than through Tune) and, as rlfleet's runtime does, ``include_dashboard=False``.

It prints one line per ``train()`` call, ``iter N | env_steps S | W s``, then sleeps until
it is killed, so that ``scripts/bench_memory.py`` can measure the PSS of its process tree
after the same number of iterations as ours. SIGTERM exits through ``ray.shutdown``.

    python scripts/peers/rllib_ppo_memory.py --iterations 5

Runs in rlfleet's own venv (ray[rllib] is installed there); RLlib warns that ``lz4`` is
missing, which only disables its sample compression.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=5)
    args = p.parse_args()
    # The default SIGTERM ends the interpreter without atexit; exiting runs ray.shutdown.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    ray.init(num_cpus=2, include_dashboard=False)
    algo = PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=2).build_algo()
    t0 = time.perf_counter()
    for i in range(1, args.iterations + 1):
        result = algo.train()
        env_steps = int(result["num_env_steps_sampled_lifetime"])
        print(f"iter {i:5d} | env_steps {env_steps:9d} | {time.perf_counter() - t0:7.1f} s", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
