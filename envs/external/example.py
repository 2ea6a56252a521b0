"""A simulator that owns its loop: gymnasium envs stepped here, actions asked of a
training run's external env runner over the protocol (server-side inference).

    python scripts/train.py --algo ppo --env external --set 'env_config={spaces_from: CartPole-v1, port: 9900}'
    python -m rlfleet.envs.external.example --env CartPole-v1 --port 9900 --connections 2

Each connection runs its own env loop in a thread: reset, ``get_action``, step,
``log_reward``, and ``end_episode`` with the last observation (terminated or truncated).
Stops when the server goes away, after ``--episodes`` episodes per connection, or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import threading

import gymnasium as gym

from rlfleet.envs.external import ExternalError, PolicyClient
from rlfleet.envs.schema import space_to_schema


def run_connection(env_id: str, port: int, seed: int, episodes: int, token: str | None, host: str,
                   local: bool = False) -> int:
    env = gym.make(env_id)
    done_episodes = 0
    try:
        with PolicyClient(host=host, port=port, token=token, name=f"{env_id}#{seed}",
                          observation_space=space_to_schema(env.observation_space),
                          action_space=space_to_schema(env.action_space)) as client:
            if local:
                return run_local(env, client, seed, episodes)
            while episodes <= 0 or done_episodes < episodes:
                obs, _ = env.reset(seed=seed + done_episodes)
                client.start_episode()
                while True:
                    obs, reward, terminated, truncated, _ = env.step(client.get_action(obs))
                    client.log_reward(reward)
                    if terminated or truncated:
                        client.end_episode(obs, terminated=terminated, truncated=truncated and not terminated)
                        break
                done_episodes += 1
    except (ConnectionError, ExternalError, OSError):  # noqa: B014
        pass  # the training run ended (or refused us): this connection is done
    finally:
        env.close()
    return done_episodes


def run_local(env: gym.Env, client: PolicyClient, seed: int, episodes: int, report_every: int = 64) -> int:
    """Client-side inference: act with the fetched policy here, report the episode in parts
    of ``report_every`` steps and at its end, fetch the policy again whenever the server's
    weights moved on."""
    policy = client.fetch_policy(seed=seed)
    done_episodes = 0
    while episodes <= 0 or done_episodes < episodes:
        obs, _ = env.reset(seed=seed + done_episodes)
        steps, rewards, ended = [], [], False
        while not ended:
            action, step = policy.act(obs)
            steps.append(step)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            ended = terminated or truncated
            if ended or len(steps) == report_every:
                reply = client.report_episode(steps, rewards, obs, terminated=terminated,
                                              truncated=truncated and not terminated)
                steps, rewards = [], []
                if reply["weights_version"] != policy.weights_version:
                    policy = client.fetch_policy(seed=seed + done_episodes + reply["weights_version"])
        done_episodes += 1
    return done_episodes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Drive gymnasium envs from their own loop against an external runner.")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9900)
    p.add_argument("--token")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--episodes", type=int, default=0, help="per connection; 0 runs until the server goes away")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local", action="store_true", help="client-side inference: act here with the fetched ONNX "
                   "policy (needs onnxruntime) and report whole episodes")
    args = p.parse_args(argv)
    threads = [threading.Thread(target=run_connection, daemon=True,
                                args=(args.env, args.port, args.seed + 100_000 * i, args.episodes, args.token, args.host,
                                      args.local))
               for i in range(args.connections)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
