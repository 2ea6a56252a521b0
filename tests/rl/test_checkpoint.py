"""Checkpoints: a restore reproduces the saved algorithm exactly, bad files fail with a
CheckpointError naming the path, and a save killed midway leaves the previous one intact
(the format itself, sharing and the run loop's copies: test_checkpoint_format.py)."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.rl.checkpoint import OLD, STATE, TRAINER, WEIGHTS, CheckpointError, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMALL = dict(
    env="CartPole-v1",
    seed=0,
    num_envs_per_runner=2,
    rollout_fragment_length=16,
    minibatch_size=32,
    num_epochs=2,
    normalize_obs=True,
)


def build(**overrides):
    return PPOConfig(**{**SMALL, **overrides}).build()


def assert_same(a, b, where="state"):
    """Exact equality of nested dicts / lists / tensors / arrays / plain values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a.cpu(), b.cpu()), f"{where}: tensors differ"
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def same(a, b):
    try:
        assert_same(a, b)
    except AssertionError:
        return False
    return True


def module_state(algo):
    return algo.learner_group.learner.module.state_dict()


def optimizer_state(algo):
    return algo.learner_group.learner.optimizers["default"].state_dict()


def runner_policies(algo):
    """What each runner acts with: the numpy policy's fused layers and log-std (local
    backend: the runners are plain objects in this process)."""
    return [(r.policy.layers, r.policy.log_std) for r in algo.env_runner_group.group.actors]


def runner_filters(algo):
    return [r.filter.get_state() for r in algo.env_runner_group.group.actors]


def counters(algo):
    return dict(iteration=algo.iteration, env_steps=algo.env_steps, episodes=algo.episodes,
                weights_version=algo.weights_version)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An algorithm trained for 3 iterations and its checkpoint directory."""
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint")
    algo = build()
    for _ in range(3):
        algo.train()
    written = algo.save(path)
    assert written == path and all(os.path.isfile(os.path.join(path, f)) for f in (STATE, WEIGHTS, TRAINER))
    yield algo, path
    algo.stop()


def test_restore_reproduces_weights_optimiser_filter_and_counters(saved):
    algo, path = saved
    fresh = build()
    try:
        # Guard: before the restore the new algorithm differs in everything compared below.
        assert not same(module_state(algo), module_state(fresh))
        assert not same(optimizer_state(algo), optimizer_state(fresh))
        assert not same(algo.connector.get_state(), fresh.connector.get_state())
        assert counters(fresh) != counters(algo)

        fresh.restore(path)

        assert_same(module_state(algo), module_state(fresh), "module")
        assert_same(optimizer_state(algo), optimizer_state(fresh), "optimizer")
        assert_same(algo.connector.get_state(), fresh.connector.get_state(), "obs_filter")
        assert algo.learner_group.learner.rng.bit_generator.state == fresh.learner_group.learner.rng.bit_generator.state
        assert list(fresh.episode_returns) == list(algo.episode_returns)
        assert list(fresh.episode_lengths) == list(algo.episode_lengths)
        # The runners act with the restored weights and normalise with the restored stats.
        expected = fresh.env_runner_group.group.actors[0].policy.spec.build_acting(seed=0)
        expected.load({k: v.numpy() for k, v in module_state(algo).items()})
        for acting in runner_policies(fresh):
            assert_same((expected.layers, expected.log_std), acting, "runner policy")
        for state in runner_filters(fresh):
            assert_same(algo.connector.get_state(), state, "runner filter")
        assert (fresh.iteration, fresh.env_steps, fresh.episodes) == (3, 96, algo.episodes)
        assert fresh.episodes > 0
    finally:
        fresh.stop()


def test_restore_keeps_the_saved_weights_version(saved):
    # The restored weights are the saved version; re-broadcasting them must not make them a
    # new one, or a resumed run's weights_version (and its logs) drift from the original's.
    algo, path = saved
    fresh = build()
    try:
        fresh.restore(path)
        assert fresh.weights_version == algo.weights_version == load_checkpoint(path)["counters"]["weights_version"]
        assert all(r.weights_version == algo.weights_version for r in fresh.env_runner_group.group.actors)
    finally:
        fresh.stop()


def test_two_restores_of_one_checkpoint_train_identically(saved):
    # Both start from the checkpoint's RNG and weights and from freshly reset envs (env
    # state is not part of a checkpoint), so their next iterations must match exactly.
    _, path = saved
    b, c = build(), build()
    try:
        b.restore(path)
        rb = b.train()
        c.restore(path)
        rc = c.train()
        timing = {"time_s", "env_steps_per_s", "runner_busy_fraction", "weight_sync_s"}
        # (NaN-aware: episode_return_best is NaN until a full window of episodes has ended)
        np.testing.assert_equal({k: v for k, v in rb.items() if k not in timing},
                                {k: v for k, v in rc.items() if k not in timing})
        assert rb["iteration"] == 4 and rb["env_steps"] == 128
        assert_same(module_state(b), module_state(c), "module after one more iteration")
        assert_same(optimizer_state(b), optimizer_state(c), "optimizer after one more iteration")
        assert_same(b.connector.get_state(), c.connector.get_state(), "filter after one more iteration")
    finally:
        b.stop()
        c.stop()


def test_time_goes_on_from_the_checkpoint(saved):
    algo, path = saved
    saved_time = load_checkpoint(path)["counters"]["time_s"]
    assert saved_time > 0
    fresh = build()
    try:
        fresh.restore(path)
        assert fresh.train()["time_s"] >= saved_time
    finally:
        fresh.stop()


def _truncated(src, dst):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) // 2])


def _random_bytes(src, dst):
    open(dst, "wb").write(np.random.default_rng(0).bytes(4096))


def _empty(src, dst):
    open(dst, "wb").close()


def _foreign_file(src, dst):
    """The same kind of file, from something else: a torch file, JSON or safetensors."""
    if dst.endswith(".pt"):
        torch.save({"weights": torch.zeros(3)}, dst)
    elif dst.endswith(".json"):
        open(dst, "w").write('{"weights": [0, 0, 0]}')
    else:
        import safetensors.torch

        safetensors.torch.save_file({"weights": torch.zeros(3)}, dst)


@pytest.mark.parametrize("name", [STATE, WEIGHTS, TRAINER])
@pytest.mark.parametrize("corrupt", [_truncated, _random_bytes, _empty, _foreign_file])
def test_corrupt_checkpoint_is_a_checkpoint_error_naming_the_file(saved, tmp_path, corrupt, name):
    _, path = saved
    bad_dir = tmp_path / "bad"
    shutil.copytree(path, bad_dir)
    bad_file = str(bad_dir / name)
    corrupt(os.path.join(path, name), bad_file)
    if name != TRAINER:  # trainer.pt is read by a restore only
        with pytest.raises(CheckpointError, match="corrupt checkpoint") as err:
            load_checkpoint(str(bad_dir))
        assert bad_file in str(err.value)
        assert "\n" not in str(err.value)  # one line, fit for the CLI's stderr
    else:
        assert load_checkpoint(str(bad_dir))["counters"]["iteration"] == 3

    algo = build()
    try:
        before = counters(algo)
        with pytest.raises(CheckpointError, match="corrupt checkpoint") as err:
            algo.restore(str(bad_dir))
        assert bad_file in str(err.value) and "\n" not in str(err.value)
        assert counters(algo) == before
    finally:
        algo.stop()


def test_files_of_two_saves_in_one_directory_are_refused(saved, tmp_path):
    # A directory copied over another by hand, caught halfway: its files are of two saves.
    algo, path = saved
    other = str(tmp_path / "other")
    algo.save(other)
    mixed = tmp_path / "mixed"
    shutil.copytree(path, mixed)
    shutil.copy(os.path.join(other, WEIGHTS), mixed / WEIGHTS)
    with pytest.raises(CheckpointError, match="from another save") as err:
        load_checkpoint(str(mixed))
    assert str(mixed / WEIGHTS) in str(err.value)


def test_missing_checkpoint_directory_names_the_path(tmp_path):
    missing = str(tmp_path / "no" / "such" / "dir")
    with pytest.raises(CheckpointError, match="no checkpoint") as err:
        load_checkpoint(missing)
    assert missing in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint") as err:
        load_checkpoint(str(empty))
    assert str(empty) in str(err.value)


def test_restore_accepts_the_file_as_well_as_the_directory(saved):
    algo, path = saved
    fresh = build()
    try:
        fresh.restore(os.path.join(path, STATE))
        assert_same(module_state(algo), module_state(fresh), "module")
    finally:
        fresh.stop()


def test_restore_with_different_normalize_obs_is_refused_and_changes_nothing(saved):
    _, path = saved
    other = build(normalize_obs=False)
    try:
        weights = {k: v.clone() for k, v in module_state(other).items()}
        before = counters(other)
        with pytest.raises(CheckpointError, match="normalize_obs") as err:
            other.restore(path)
        assert path in str(err.value)
        assert_same(weights, module_state(other), "module after a refused restore")
        assert counters(other) == before
    finally:
        other.stop()


def test_restore_into_a_different_model_is_a_checkpoint_error(saved):
    # A different network (or env) cannot take the saved weights: that is bad input at the
    # boundary (exit 2 from the CLI), not a torch RuntimeError from load_state_dict.
    _, path = saved
    other = build(hidden_sizes=(32,))
    try:
        weights = {k: v.clone() for k, v in module_state(other).items()}
        with pytest.raises(CheckpointError) as err:
            other.restore(path)
        assert path in str(err.value)
        assert_same(weights, module_state(other), "module after a refused restore")
    finally:
        other.stop()


KILLED_SAVE = textwrap.dedent(
    """
    import os, shutil, sys, time
    sys.path.insert(0, {repo!r})
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.rl import checkpoint

    ckpt, reference, marker, where = sys.argv[1:5]
    algo = PPOConfig(**{config!r}).build()
    algo.train()
    algo.save(ckpt)
    shutil.copytree(ckpt, reference)
    algo.train()  # the second checkpoint would hold other weights and counters

    def stall():
        open(marker, "w").close()
        time.sleep(120)  # killed here

    if where == "mid-write":  # half of the weights file written into the new directory
        real_write = checkpoint._write_file

        def write(path, data):
            if path.endswith("model.safetensors"):
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                stall()
            real_write(path, data)

        checkpoint._write_file = write
    else:  # between the renames: the old directory moved away, the new one not yet in
        real_rename, renames = os.rename, []

        def rename(src, dst):
            renames.append(dst)
            if len(renames) == 2:
                stall()
            real_rename(src, dst)

        checkpoint.os.rename = rename
    algo.save(ckpt)
    """
)


def _tree(path):
    return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))}


@pytest.mark.parametrize("where", ["mid-write", "between-renames"])
def test_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, where):
    ckpt, reference, marker = tmp_path / "ckpt", tmp_path / "reference", tmp_path / "second-save-started"
    script = tmp_path / "killed_save.py"
    script.write_text(KILLED_SAVE.format(repo=REPO, config=SMALL))
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(reference), str(marker), where],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"saver exited {proc.returncode} before the second save:\n{proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "the second save never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # The checkpoint read is byte for byte the first, never the half-written second: the
    # directory itself, or (killed between the renames) the .old one that loaders fall back to.
    if where == "mid-write":
        assert _tree(ckpt) == _tree(reference)
    else:
        assert not ckpt.exists() and _tree(str(ckpt) + OLD) == _tree(reference)
    state = load_checkpoint(str(ckpt))
    assert state["counters"]["iteration"] == 1 and state["counters"]["env_steps"] == 32
    algo = build()
    try:
        algo.restore(str(ckpt))
        assert_same(load_checkpoint(str(reference))["learner"]["module"], module_state(algo), "module")
        assert (algo.iteration, algo.env_steps, algo.episodes) == (1, 32, state["counters"]["episodes"])
        # A later save into the same place works and clears what the killed one left.
        algo.save(str(ckpt))
        assert load_checkpoint(str(ckpt))["counters"]["iteration"] == 1
        assert sorted(os.listdir(tmp_path)) == sorted(["ckpt", "reference", "second-save-started", "killed_save.py"])
    finally:
        algo.stop()


def _rows(logdir):
    import json

    return [json.loads(line) for line in open(os.path.join(logdir, "progress.jsonl"))]


def _interrupting_update(algo, at_call, action):
    """The learner's update runs ``action`` on its ``at_call``-th call: by then the
    iteration has sampled (its env steps are counted) but not logged."""
    update, calls = algo.learner_group.update, []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            action()
        return update(*args, **kwargs)

    algo.learner_group.update = wrapped


@pytest.mark.parametrize("how", ["cut", "signal"])
def test_an_interrupt_mid_iteration_checkpoints_the_last_logged_iteration_and_resumes_without_a_gap(tmp_path, how):
    """Issue 30: Ctrl-C after an iteration sampled but before it was logged wrote a
    checkpoint with its env steps (5,376) against the last row's (5,120), and --restore
    went on with a gap. A Ctrl-C now waits for the iteration's end; an iteration cut anyway
    (an exception, a second Ctrl-C) is not in the checkpoint."""
    from rlfleet.scripts.tools.experiment import Criteria, run_until

    logdir, ckpt = str(tmp_path / "run"), str(tmp_path / "run" / "checkpoint")

    def cut():
        raise KeyboardInterrupt

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)

    with build(logdir=logdir) as algo:
        _interrupting_update(algo, 4, cut if how == "cut" else ctrl_c)
        summary = run_until(algo, Criteria(env_steps=10_000), checkpoint_dir=ckpt)
    rows = _rows(logdir)
    assert summary["interrupted"]
    # cut: iterations 1-3 logged, the 4th never; a held Ctrl-C lets the 4th finish
    assert rows[-1]["iteration"] == (3 if how == "cut" else 4)
    counters = load_checkpoint(ckpt)["counters"]
    assert (counters["iteration"], counters["env_steps"], counters["episodes"]) == \
        (rows[-1]["iteration"], rows[-1]["env_steps"], rows[-1]["episodes_total"])
    assert (summary["iteration"], summary["env_steps"]) == (counters["iteration"], counters["env_steps"])
    with build(logdir=logdir) as again:
        again.restore(ckpt)
        nxt = again.train()
    assert nxt["iteration"] == rows[-1]["iteration"] + 1
    assert nxt["env_steps"] == rows[-1]["env_steps"] + 2 * 16  # one iteration's steps: no gap
    assert [r["iteration"] for r in _rows(logdir)] == list(range(1, nxt["iteration"] + 1))


def test_a_second_ctrl_c_cuts_the_iteration_at_once(tmp_path):
    from rlfleet.scripts.tools.experiment import Criteria, run_until

    ckpt = str(tmp_path / "checkpoint")

    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with build(logdir=str(tmp_path)) as algo:
        _interrupting_update(algo, 3, twice)
        summary = run_until(algo, Criteria(env_steps=10_000), checkpoint_dir=ckpt)
        assert summary["interrupted"] and algo.env_steps == 3 * 32  # the third iteration had sampled
    assert load_checkpoint(ckpt)["counters"]["iteration"] == _rows(str(tmp_path))[-1]["iteration"] == 2


def test_best_return_is_the_best_full_window_mean_and_survives_a_restore(tmp_path):
    """episode_return_best (issue 31): NaN until metrics_smoothing_episodes episodes have
    ended, then the highest episode_return_mean of any iteration so far; a restore goes on
    from the saved best rather than forgetting it."""
    algo = build(metrics_smoothing_episodes=5, normalize_obs=False)
    rows = [algo.train() for _ in range(12)]
    try:
        best = float("nan")
        for row in rows:
            if row["episode_window_full"]:
                best = row["episode_return_mean"] if np.isnan(best) else max(best, row["episode_return_mean"])
            np.testing.assert_equal(row["episode_return_best"], best)
        assert not rows[0]["episode_window_full"] and np.isnan(rows[0]["episode_return_best"])
        assert not np.isnan(best)
        algo.save(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    fresh = build(metrics_smoothing_episodes=5, normalize_obs=False)
    try:
        fresh.restore(str(tmp_path / "ckpt"))
        assert fresh.best_return_mean == best
        assert fresh.train()["episode_return_best"] >= best
    finally:
        fresh.stop()
