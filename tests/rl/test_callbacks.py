"""Callbacks and info_metrics (rl/callbacks.py): the per-episode aggregation against
hand-computed values, the hooks' calls in the driver, and the metrics' way through the
runners to the progress rows."""

from __future__ import annotations

import json
import textwrap
import os

import numpy as np
import pytest

from rlfleet.algorithms.ppo.config import PPOConfig
from rlfleet.envs.testing import CorridorEnv
from rlfleet.rl.callbacks import Callbacks, EpisodeHooks, load_callbacks
from rlfleet.rl.config import ConfigError
from tests.extras import needs_extra


class Flags(Callbacks):
    def on_episode_end(self, *, episode):
        episode.metrics["long"] = float(episode.length > 3)


def test_info_metrics_fold_each_key_per_episode_as_asked():
    hooks = EpisodeHooks([], {"a": "last", "b": "sum", "c": "mean", "d": "max", "e": "min"}, num_envs=2,
                         runner_index=0)
    steps = [{"a": 1, "b": 2.0, "c": 1, "d": -1, "e": 5}, {"a": 0, "c": 3, "d": 4, "e": "n/a"},
             {"b": 0.5, "c": 8, "d": 2, "e": 2, "other": 9}]
    for info in steps:
        hooks.step(0, 1.0, info)
    hooks.step(1, 1.0, {"a": True})
    # by hand: last a = 0 (the last step without it keeps it); b = 2 + 0.5; c = (1 + 3 + 8) / 3;
    # d = max(-1, 4, 2); e = min(5, 2) ("n/a" is not a number)
    assert hooks.end(0) == {"a": 0.0, "b": 2.5, "c": 4.0, "d": 4.0, "e": 2.0}
    assert hooks.end(1) == {"a": 1.0}
    hooks.step(0, 1.0, {"b": 1})  # a new episode starts from nothing
    assert hooks.end(0) == {"b": 1.0}


def test_episode_hooks_see_the_episode_and_only_overridden_hooks_are_called():
    seen = []

    class Steps(Callbacks):
        def on_episode_start(self, *, episode):
            episode.user_data["started"] = True

        def on_episode_step(self, *, episode):
            seen.append((episode.env_index, episode.length, episode.total_reward, episode.info.get("x")))

    hooks = EpisodeHooks([Steps(), Flags()], {}, num_envs=1, runner_index=3)
    assert EpisodeHooks.wanted([Callbacks()], {}) is False  # nothing overridden: no per-step work at all
    hooks.step(0, 0.5, {"x": 1})
    hooks.step(0, 1.5, {"x": 2})
    assert hooks.episodes[0].user_data == {"started": True} and hooks.episodes[0].runner_index == 3
    assert seen == [(0, 1, 0.5, 1), (0, 2, 2.0, 2)]
    assert hooks.end(0) == {"long": 0.0}


@pytest.mark.parametrize("value, message", [
    ({"success": "final"}, "info_metrics: success: 'final' is not an aggregation; use one of last, sum, mean, max, min"),
    ({"": "sum"}, "info_metrics: key '' must be a non-empty string"),
])
def test_bad_info_metrics_are_one_line(value, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        PPOConfig(env="CartPole-v1", info_metrics=value)


def test_bad_callbacks_are_one_line():
    with pytest.raises(ConfigError, match="must be 'module:Class'"):
        PPOConfig(env="CartPole-v1", callbacks=["nocolon"])
    with pytest.raises(ConfigError, match="is not a subclass of rlfleet.rl.callbacks.Callbacks"):
        PPOConfig(env="CartPole-v1", callbacks=[dict])
    with pytest.raises(ConfigError, match="no_such_mod.*ship your module with --import"):
        load_callbacks(["no_such_mod:X"])
    with pytest.raises(ConfigError, match="module 'tests.fleet_envs' has no 'Nope'"):
        load_callbacks(["tests.fleet_envs:Nope"])


def test_a_callback_class_is_kept_by_its_import_name():
    config = PPOConfig(env="CartPole-v1", callbacks=[Flags])
    assert config.to_dict()["callbacks"] == [f"{Flags.__module__}:Flags"]
    again = PPOConfig.from_dict(config.to_dict())
    assert [type(c) for c in load_callbacks(again.callbacks)] == [Flags]


def _corridor_config(tmp_path, **extra):
    return PPOConfig(env=CorridorEnv, env_config={"length": 3, "max_steps": 8}, num_envs_per_runner=4,
                     rollout_fragment_length=16, minibatch_size=32, num_epochs=1, metrics_smoothing_episodes=25,
                     logdir=str(tmp_path / "run"), **extra)


def test_info_metrics_reach_the_progress_rows_as_the_mean_over_the_episode_window(tmp_path):
    config = _corridor_config(tmp_path, info_metrics={"success": "last", "position": "max"}, callbacks=[Flags])
    algo = config.build()
    try:
        for _ in range(4):
            result = algo.train()
        returns = np.array(algo.episode_returns)
        # Corridor: an episode that reaches the end (success) has a positive return, else
        # -0.01 a step; and its furthest position is the corridor's length, 3.
        assert result["custom/success"] == pytest.approx(np.mean(returns > 0))
        assert len(algo.custom_metrics["success"]) == len(returns)
        assert max(algo.custom_metrics["position"]) == 3.0 and min(algo.custom_metrics["position"]) >= 0.0
        assert 0.0 <= result["custom/long"] <= 1.0
    finally:
        algo.stop()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "progress.jsonl")]
    assert "custom/success" in rows[-1] and rows[-1]["custom/success"] == result["custom/success"]


def test_driver_hooks_run_in_order_and_may_add_to_the_row(tmp_path):
    from tests.fleet_envs import Recorder

    Recorder.calls = []
    algo = _corridor_config(tmp_path, callbacks=["tests.fleet_envs:Recorder"]).build()
    try:
        algo.train()
        algo.save(str(tmp_path / "run" / "checkpoint"))
        algo.train()
    finally:
        algo.stop()
    assert Recorder.calls == [("result", 1), ("checkpoint", "checkpoint"), ("result", 2), ("end", 2)]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "progress.jsonl")]
    assert [r["custom_key"] for r in rows] == [10, 20]


@needs_extra("pettingzoo", "pettingzoo")
def test_info_metrics_are_refused_where_runners_do_not_gather_them():
    with pytest.raises(ConfigError, match="^info_metrics and the callbacks' episode hooks are built for gymnasium "
                                          "envs only, not multi-agent envs yet; leave them out$"):
        PPOConfig(env="pettingzoo:pettingzoo.classic.rps_v2", info_metrics={"x": "sum"}).build()


@pytest.fixture
def count_dir(tmp_path, monkeypatch):
    path = tmp_path / "counts"
    path.mkdir()
    monkeypatch.setenv("RLFLEET_TEST_COUNT_DIR", str(path))  # set before Ray starts: its workers inherit it
    return path


def test_a_callback_counts_the_episodes_of_two_ray_runners_as_the_progress_rows_do(tmp_path, count_dir, shared_ray):
    config = _corridor_config(tmp_path, callbacks=["tests.fleet_envs:EpisodeCounter"], num_env_runners=2)
    algo = config.build()
    try:
        for _ in range(3):
            result = algo.train()
    finally:
        algo.stop()
    files = sorted(os.listdir(count_dir))
    assert {f.split("-")[1] for f in files} == {"0", "1"}  # both runners counted, each in its own process
    counted = sum(len(open(count_dir / f).read().split()) for f in files)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "progress.jsonl")]
    assert counted == rows[-1]["episodes_total"] == result["episodes_total"] > 0


def test_a_callbacks_module_of_the_users_own_is_shipped_to_the_ray_workers(tmp_path, monkeypatch):
    # a hooks module beside the user's script is on the driver's path, not on a remote
    # node's: it goes to Ray's py_modules like an --import module (a class or its name alike)
    (tmp_path / "my_hooks.py").write_text(textwrap.dedent("""
        from rlfleet.rl.callbacks import Callbacks

        class Ones(Callbacks):
            def on_episode_end(self, *, episode):
                episode.metrics["one"] = 1.0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_hooks

    for given in ("my_hooks:Ones", my_hooks.Ones):
        kind, options = PPOConfig(env="CartPole-v1", num_env_runners=2, callbacks=[given]).runtime_request()
        assert kind == "ray" and options["py_modules"] == [my_hooks]
    # rlfleet's own (or an installed package's) is imported by the workers themselves
    assert PPOConfig(env="CartPole-v1", num_env_runners=2,
                     callbacks=["rlfleet.rl.callbacks:Callbacks"]).runtime_request()[1]["py_modules"] == []
