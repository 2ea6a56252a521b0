"""Survive a simulator that raises: recreate the sub-env and end its episode.

Real simulators crash (a physics blow-up, a lost license server). One crash should cost
one episode, not the run: the wrapper builds a fresh env from the creator and reports the
failed step as a truncation, so the runner drops that episode from the metrics and
bootstraps from the last good observation. A sub-env that fails ``max_retries`` times in
a row is broken, not flaky, and the error is raised; so is one whose episodes end in an
error ``max_failed_episodes`` times in a row, with no episode finishing in between (a
simulator that crashes at step 5 of every episode would otherwise run forever).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym

from rlfleet.envs.checks import EnvContractError


class EnvFailedError(RuntimeError):
    """A sub-env kept raising after being recreated."""


class RecreateOnError(gym.Wrapper):
    def __init__(self, creator: Callable[[], gym.Env], name: str, *, max_retries: int = 3,
                 max_failed_episodes: int = 20) -> None:
        super().__init__(creator())
        self.creator, self.name, self.max_retries = creator, name, max_retries
        self.max_failed_episodes = max_failed_episodes
        self.failures_in_a_row = 0
        self.failed_episodes_in_a_row = 0
        self.episode_step = 0
        self.last_obs: Any = None

    def _recreate(self, error: Exception) -> None:
        self.failures_in_a_row += 1
        if self.failures_in_a_row > self.max_retries:
            raise EnvFailedError(
                f"env {self.name!r} failed {self.failures_in_a_row} times in a row; last error: "
                f"{type(error).__name__}: {error}"
            ) from error
        self.failed_episodes_in_a_row += 1
        if self.failed_episodes_in_a_row >= self.max_failed_episodes:
            raise EnvFailedError(
                f"env {self.name!r}: {self.failed_episodes_in_a_row} episodes in a row ended in an error, none "
                f"finished (the last at step {self.episode_step + 1}); last error: {type(error).__name__}: {error}"
            ) from error
        try:
            self.env.close()
        except Exception:  # the broken env may not even close; it is dropped either way
            pass
        self.env = self.creator()

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        while True:
            try:
                out = self.env.reset(**kwargs)
                break
            except EnvContractError:
                raise
            except Exception as e:  # noqa: BLE001 - any simulator error is survivable once
                self._recreate(e)
        # A reset that breaks the API is passed on for the vector env's checks to name.
        self.last_obs = out[0] if isinstance(out, tuple) and len(out) == 2 else None
        self.episode_step = 0
        return out

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        try:
            out = self.env.step(action)
        except EnvContractError:
            raise
        except Exception as e:  # noqa: BLE001
            self._recreate(e)
            # The episode ends here as a truncation from the last good observation; the
            # vector env then resets this sub-env, which now is the fresh one.
            return self.last_obs, 0.0, False, True, {"env_error": f"{type(e).__name__}: {e}"}
        if type(out) is not tuple or len(out) != 5:
            return out  # the vector env's checks name the broken step API
        obs, reward, terminated, truncated, info = out
        self.failures_in_a_row = 0
        self.episode_step += 1
        if terminated or truncated:  # an episode finished: the simulator does work
            self.failed_episodes_in_a_row = 0
        self.last_obs = obs
        return out
