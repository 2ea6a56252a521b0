"""What the Stable-Baselines3 peer scripts share: the stop-at-target callback, their
command line, and the one JSON result line (stdout) plus a diagnostic line (stderr).

Imported by the peer scripts from their own folder; runs only in the SB3 venv."""

import argparse
import json
import sys
import time
from collections import deque
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback


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
        # make_vec_env wraps each env in Monitor, which adds info["episode"] on episode end;
        # the mean can only change then, so that is when it is checked.
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is None:
                continue
            self.returns.append(float(episode["r"]))
            self.episodes += 1
            if len(self.returns) >= self.window:
                mean = sum(self.returns) / self.window
                if self.best_mean is None or mean > self.best_mean:
                    self.best_mean, self.best_mean_step = mean, self.num_timesteps
                if mean >= self.target:
                    self.reached = True
                    return False  # stops model.learn()
        return True


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=450.0)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=200_000)
    return parser.parse_args()


def report(peer: str, args: argparse.Namespace, model: Any, callback: StopAtTarget, t0: float) -> None:
    """The one JSON line the benchmark reads (stdout), then the diagnostics (stderr)."""
    result = {
        "peer": peer,
        "seed": args.seed,
        "reached": callback.reached,
        "env_steps": int(model.num_timesteps),
        "episodes": callback.episodes,
        "wall_s_in_process": round(time.time() - t0, 3),
    }
    print(json.dumps(result), flush=True)
    diagnostics = {"best_mean": callback.best_mean, "best_mean_env_step": callback.best_mean_step}
    print(json.dumps(diagnostics), file=sys.stderr, flush=True)
