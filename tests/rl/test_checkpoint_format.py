"""Checkpoints safe to share (issue 34, format 3): a directory of JSON, safetensors, a
trainer file only a restore reads, and a model card; loading one to serve, export or
evaluate unpickles nothing; a save that fails midway leaves the previous one readable; the
run loop keeps the last N and the best evaluation's; format 2 is refused in one line
naming the converter, which round-trips it."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from rlfleet.rl import checkpoint
from rlfleet.rl.checkpoint import (CARD, OLD, STATE, TRAINER, WEIGHTS, CheckpointError, CheckpointWriteError,
                                   load_checkpoint)
from tests.rl.test_checkpoint import REPO, assert_same, build, module_state, optimizer_state

FILES = sorted([STATE, WEIGHTS, TRAINER, CARD])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PPO (observations normalised) trained for 2 iterations, and its checkpoint."""
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint")
    algo = build()
    algo.train()
    algo.train()
    algo.save(path)
    yield algo, path
    algo.stop()


def tree_of(path):
    """{relative file name: bytes} of a directory (recursively)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def test_a_checkpoint_is_strict_json_safetensors_a_trainer_file_and_a_card(saved):
    import safetensors.torch

    algo, path = saved
    assert sorted(os.listdir(path)) == FILES

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    state = json.loads(open(os.path.join(path, STATE)).read(), parse_constant=refuse)  # NaN written as JSON
    assert state["format"] == 3 and state["algo"] == "ppo" and state["config"]["env"] == "CartPole-v1"
    assert state["counters"]["iteration"] == 2 and state["module_spec"]["fields"]["hidden_sizes"] == [64, 64]
    assert "optimizers" not in json.dumps(state) and "rng" not in state
    # the weights, as torch's own state dict names them, for anyone to load
    assert_same(dict(module_state(algo)), safetensors.torch.load_file(os.path.join(path, WEIGHTS)), "weights")
    assert open(os.path.join(path, TRAINER), "rb").read(4) == b"PK\x03\x04"  # a torch file: only restore reads it


def test_the_state_comes_back_exactly(saved):
    algo, path = saved
    ours = algo.get_state()
    loaded = load_checkpoint(path, training=True)
    assert_same(ours["learner"], loaded["learner"], "learner")  # weights, optimiser, learner RNG
    assert_same(ours["rng"], loaded["rng"], "rng")
    for mine, theirs in zip(ours["connector"], loaded["connector"]):  # float64 statistics, bit for bit
        assert mine["count"] == theirs["count"]
        for key in ("mean", "m2"):
            assert theirs[key].dtype == np.float64 and theirs[key].tobytes() == mine[key].tobytes()
    assert loaded["episode_returns"] == ours["episode_returns"]
    assert loaded["module_spec"] == ours["module_spec"]
    public = load_checkpoint(path)  # for acting: no optimiser, no RNG
    assert set(public["learner"]) == {"module"} and "rng" not in public


def test_a_checkpoint_shared_without_its_trainer_file_acts_but_does_not_resume(saved, tmp_path):
    from rlfleet.algorithms.ppo import PPO
    from rlfleet.rl.inference import Policy

    algo, path = saved
    shared = shutil.copytree(path, tmp_path / "shared")
    os.unlink(shared / TRAINER)
    Policy.load(str(shared)).act(np.zeros((1, 4), np.float32))
    PPO.from_checkpoint(str(shared)).stop()
    fresh = build()
    try:
        with pytest.raises(CheckpointError, match="holds the policy only") as err:
            fresh.restore(str(shared))
        assert str(shared) in str(err.value) and fresh.iteration == 0
    finally:
        fresh.stop()


def test_a_multi_agent_checkpoint_prefixes_its_weights_by_policy_and_restores_them(tmp_path):
    import safetensors.torch

    from rlfleet.algorithms.ppo import PPOConfig
    from tests.rl.test_multi_agent_runner import SCRIPTED

    config = {"env": SCRIPTED, "policy_mapping": {"a": "pa", "b": "pb"}, "num_envs_per_runner": 2,
              "rollout_fragment_length": 4, "minibatch_size": 8, "hidden_sizes": [8], "log_to_console": False}
    algo = PPOConfig.from_dict(config, source="test").build()
    fresh = PPOConfig.from_dict({**config, "seed": 1}, source="test").build()
    try:
        algo.train()
        algo.save(str(tmp_path / "ckpt"))
        keys = safetensors.torch.load_file(str(tmp_path / "ckpt" / WEIGHTS))
        assert {k.split("/")[0] for k in keys} == {"pa", "pb"}
        fresh.restore(str(tmp_path / "ckpt"))
        for pid in ("pa", "pb"):
            assert_same(algo.learner_group.groups[pid].learner.module.state_dict(),
                        fresh.learner_group.groups[pid].learner.module.state_dict(), pid)
            assert_same(algo.learner_group.groups[pid].learner.optimizers["default"].state_dict(),
                        fresh.learner_group.groups[pid].learner.optimizers["default"].state_dict(), pid)
    finally:
        algo.stop()
        fresh.stop()


# -- nothing unpickled --------------------------------------------------------------------------


NO_PICKLE = textwrap.dedent(
    """
    import json, pickle, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    import torch, torch.serialization

    ckpt, lm_ckpt, out = sys.argv[1:4]
    opened = []
    sys.addaudithook(lambda event, args: opened.append(args[0])
                     if event == "open" and isinstance(args[0], str) else None)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint loaded for acting was unpickled")

    class Refused:
        def __init__(self, *args, **kwargs):
            refuse()

    torch.load = torch.serialization.load = pickle.load = pickle.loads = refuse
    pickle.Unpickler = Refused

    from rlfleet.algorithms.grpo import GRPO
    from rlfleet.algorithms.ppo import PPO
    from rlfleet.rl.inference import Policy
    from rlfleet.scripts.evaluate import main as evaluate
    from rlfleet.scripts.tools.serving import PolicyService

    policy = Policy.load(ckpt)  # serving, export and evaluate.py act through it
    policy.act(np.zeros((2, 4), np.float32))
    service = PolicyService(ckpt)
    service.run("/act", [service.parse("/act", {{"obs": [0.0, 0.0, 0.0, 0.0]}})])
    try:
        import onnx  # noqa: F401 (the export extra)
    except ImportError:
        pass
    else:
        from rlfleet.rl.export import export_onnx
        export_onnx(policy, out)
    assert evaluate(["--checkpoint", ckpt, "--episodes", "1"]) == 0
    PPO.from_checkpoint(ckpt).stop()
    lm = GRPO.from_checkpoint(lm_ckpt)  # what serving an LM loads
    lm.complete("1+1=")
    lm.stop()
    print("OPENED " + json.dumps(opened))
    """
)


def test_loading_to_serve_export_and_evaluate_unpickles_nothing(saved, tmp_path):
    from rlfleet.algorithms.grpo import GRPOConfig

    _, path = saved
    lm_path = str(tmp_path / "lm")
    lm = GRPOConfig(env="text-addition", seed=0, warmup_steps=0, n_layer=1, n_head=2, n_embd=16,
                    prompts_per_runner=2, group_size=2, minibatch_size=4).build()
    try:
        lm.train()
        lm.save(lm_path)
    finally:
        lm.stop()
    script = tmp_path / "no_pickle.py"
    script.write_text(NO_PICKLE.format(repo=REPO))
    run = subprocess.run([sys.executable, str(script), path, lm_path, str(tmp_path / "policy.onnx")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    opened = json.loads(run.stdout.split("OPENED ", 1)[1])
    read = {os.path.abspath(f) for f in opened
            if os.path.abspath(f).startswith((os.path.abspath(path) + os.sep, lm_path + os.sep))}
    assert {os.path.basename(f) for f in read} == {STATE, WEIGHTS}, read  # never trainer.pt
    for file in read:  # and none of them is a pickle or a zip (torch's format)
        head = open(file, "rb").read(4)
        assert head != b"PK\x03\x04" and head[:1] != b"\x80", file


# -- atomic writes --------------------------------------------------------------------------------


@pytest.fixture
def previous(saved, tmp_path):
    """(the algorithm, a checkpoint directory of its own, its files) for a test that saves over it."""
    algo, path = saved
    mine = str(tmp_path / "checkpoint")
    shutil.copytree(path, mine)
    return algo, mine, tree_of(mine)


@pytest.mark.parametrize("step", ["weights", "trainer", "rename-away", "rename-in"])
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_readable(previous, monkeypatch, step):
    algo, path, before = previous
    parent = os.path.dirname(path)
    if step in ("weights", "trainer"):  # a full disk while a file of the new directory is written
        real = checkpoint._write_file

        def write(file, data):
            if file.endswith(WEIGHTS if step == "weights" else TRAINER):
                raise OSError(errno.ENOSPC, "No space left on device")
            real(file, data)

        monkeypatch.setattr(checkpoint, "_write_file", write)
        with pytest.raises(CheckpointWriteError) as err:
            algo.save(path)
        assert str(err.value) == f"cannot write a checkpoint into {path!r}: No space left on device"
        monkeypatch.undo()
        assert tree_of(path) == before and os.listdir(parent) == ["checkpoint"]  # no half-written directory left
    else:  # the process dies at one of the two renames
        real_rename, calls = os.rename, []

        def rename(src, dst):
            calls.append(dst)
            if len(calls) == (1 if step == "rename-away" else 2):
                raise KeyboardInterrupt
            real_rename(src, dst)

        monkeypatch.setattr(checkpoint.os, "rename", rename)
        with pytest.raises(KeyboardInterrupt):
            algo.save(path)
        monkeypatch.undo()
        if step == "rename-away":
            assert tree_of(path) == before
        else:  # the previous one was moved away: loaders read it there
            assert not os.path.exists(path) and tree_of(path + OLD) == before
    state = load_checkpoint(path)
    assert state["counters"]["iteration"] == 2
    fresh = build()
    try:
        fresh.restore(path)
        assert_same(module_state(algo), module_state(fresh), "module")
    finally:
        fresh.stop()
    algo.save(path)  # the next save goes through and clears what the failed one left
    assert os.listdir(parent) == ["checkpoint"] and sorted(os.listdir(path)) == FILES


def test_a_save_never_replaces_a_directory_holding_other_files(saved, tmp_path):
    algo, _ = saved
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("my notes")
    with pytest.raises(CheckpointWriteError, match="holds files that are not a checkpoint's \\(notes.txt\\)") as err:
        algo.save(str(notes.parent))
    assert "\n" not in str(err.value)
    assert os.listdir(notes.parent) == ["notes.txt"] and notes.read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["mine"]


# -- the run loop: latest, last N, best ---------------------------------------------------------


EVALUATIONS = [1.0, 3.0, 2.0, 5.0, 5.0, 4.0]  # improvements at iterations 1, 2 and 4


def scripted_evaluations(algo, values):
    """``algo.evaluate`` returns ``values`` in turn (the loop is what is tested here)."""
    it = iter(values)
    algo.evaluate = lambda: {"evaluation/episode_return_mean": next(it), "evaluation/num_episodes": 1}


def recorded_saves(algo):
    """[(iteration, directories written)] of every ``algo.save``."""
    real, calls = algo.save, []

    def save(path, *, copies=()):
        calls.append((algo.iteration, [os.path.basename(path), *map(os.path.basename, copies)]))
        return real(path, copies=copies)

    algo.save = save
    return calls


LOOP = dict(evaluation_interval=1, checkpoint_best=True, keep_checkpoints=2)


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    """6 iterations through run_until (a checkpoint every iteration), as a train.py command."""
    from rlfleet.scripts.tools.experiment import Criteria, run_until

    logdir = str(tmp_path_factory.mktemp("loop") / "run")
    argv = ["scripts/train.py", "--algo", "ppo", "--env", "CartPole-v1", "--set", "keep_checkpoints=2"]
    real_argv, sys.argv = sys.argv, argv
    try:
        with build(logdir=logdir, **LOOP) as algo:
            scripted_evaluations(algo, EVALUATIONS)
            saves = recorded_saves(algo)
            summary = run_until(algo, Criteria(env_steps=6 * 32), checkpoint_dir=os.path.join(logdir, "checkpoint"),
                                checkpoint_every=1)
            last = dict(algo.last_result)
    finally:
        sys.argv = real_argv
    return logdir, saves, summary, last, argv


def test_the_model_card_says_what_how_how_well_and_how_to_load(loop_run):
    logdir, _, _, last, argv = loop_run
    path = os.path.join(logdir, "checkpoint")
    card = open(os.path.join(path, CARD)).read()
    assert card.startswith("# ppo on CartPole-v1\n")
    assert "iteration 6, 192 env steps" in card
    assert "    scripts/train.py --algo ppo --env CartPole-v1 --set keep_checkpoints=2\n" in card
    block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == load_checkpoint(path)["config"]
    assert f"| training, last 100 episodes (`episode_return_mean`) | {last['episode_return_mean']:.2f} |" in card
    assert "| training, best window so far (`episode_return_best`) | n/a |" in card  # no full window yet
    assert "| evaluation, this iteration (`evaluation/episode_return_mean`) | 4.00 |" in card
    assert "| evaluation, best so far (`evaluation/episode_return_mean`) | 5.00 |" in card
    for command in (f"rlfleet serve --checkpoint {path}", f"rlfleet evaluate --checkpoint {path}",
                    f"rlfleet export --checkpoint {path}",
                    f"rlfleet train --algo ppo --env CartPole-v1 --restore {path}",
                    f"Policy.load({path!r})"):
        assert command in card, command
    kept = os.path.join(logdir, "checkpoints", "iteration-5")  # each copy names itself
    assert f"rlfleet serve --checkpoint {kept}" in open(os.path.join(kept, CARD)).read()


def test_keep_checkpoints_keeps_exactly_the_newest_n(loop_run):
    logdir, saves, summary, _, _ = loop_run
    assert summary["checkpoint"] == os.path.join(logdir, "checkpoint")
    assert sorted(os.listdir(os.path.join(logdir, "checkpoints"))) == ["iteration-5", "iteration-6"]
    for k in (5, 6):
        directory = os.path.join(logdir, "checkpoints", f"iteration-{k}")
        assert sorted(os.listdir(directory)) == FILES
        assert load_checkpoint(directory)["counters"]["iteration"] == k
    assert load_checkpoint(os.path.join(logdir, "checkpoint"))["counters"]["iteration"] == 6
    assert [d for _, dirs in saves for d in dirs if d.startswith("iteration-")] == \
        [f"iteration-{k}" for k in range(1, 7)] + ["iteration-6"]  # and the final save's


def test_checkpoint_best_is_rewritten_only_when_the_evaluation_return_improves(loop_run):
    logdir, saves, _, _, _ = loop_run
    assert [k for k, dirs in saves if "checkpoint_best" in dirs] == [1, 2, 4]
    best = load_checkpoint(os.path.join(logdir, "checkpoint_best"))
    assert best["counters"]["iteration"] == 4 and best["counters"]["best_evaluation_return"] == 5.0
    assert load_checkpoint(os.path.join(logdir, "checkpoint"))["counters"]["best_evaluation_return"] == 5.0


def test_the_best_evaluation_return_survives_a_restore(loop_run, tmp_path):
    from rlfleet.scripts.tools.experiment import Criteria, run_until

    logdir, _, _, _, _ = loop_run
    run = shutil.copytree(logdir, tmp_path / "run")
    with build(logdir=str(run), **LOOP) as algo:
        algo.restore(str(run / "checkpoint"))
        assert algo.best_evaluation_return == 5.0
        scripted_evaluations(algo, [4.5, 6.0])
        saves = recorded_saves(algo)
        run_until(algo, Criteria(env_steps=8 * 32), checkpoint_dir=str(run / "checkpoint"), checkpoint_every=1)
    assert [k for k, dirs in saves if "checkpoint_best" in dirs] == [8]  # 4.5 < 5: not the best
    assert load_checkpoint(str(run / "checkpoint_best"))["counters"]["iteration"] == 8
    assert sorted(os.listdir(run / "checkpoints")) == ["iteration-7", "iteration-8"]


# -- format 2 and the converter ---------------------------------------------------------------


def write_old_format(algo, directory):
    """What rlfleet 0.2 wrote: the whole state in one torch file, checkpoint.pt."""
    from rlfleet.rl.checkpoint_state import _to_torch

    state = algo.get_state()
    state.update(format=2, connector=_to_torch(state["connector"]))
    state["counters"].pop("best_evaluation_return")
    os.makedirs(directory)
    torch.save(state, os.path.join(directory, "checkpoint.pt"))
    return os.path.join(directory, "checkpoint.pt")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "rlfleet.scripts.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def one_line(run):
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def test_an_old_checkpoint_is_refused_in_one_line_naming_the_converter(saved, tmp_path):
    from rlfleet.algorithms.ppo import PPO
    from rlfleet.rl.inference import Policy

    algo, _ = saved
    old = str(tmp_path / "old")
    file = write_old_format(algo, old)
    expected = f"{file} is an old checkpoint (one torch file, rlfleet 0.2); this version reads checkpoint " \
               f"directories (format 3): convert it with `rlfleet convert-checkpoint {old} NEW_DIR`"
    fresh = build()
    try:
        for load in (load_checkpoint, Policy.load, PPO.from_checkpoint, fresh.restore):
            with pytest.raises(CheckpointError) as err:
                load(old)
            assert str(err.value) == expected
    finally:
        fresh.stop()
    with pytest.raises(CheckpointError, match="convert-checkpoint"):
        load_checkpoint(file)
    for args in (["export", "--checkpoint", old], ["evaluate", "--checkpoint", old, "--episodes", "1"],
                 ["serve", "--checkpoint", old]):
        run = cli(*args)
        assert run.returncode == 2 and one_line(run).endswith(expected), (args, run.stderr)
    assert os.listdir(old) == ["checkpoint.pt"]


def test_the_converter_round_trips_an_old_checkpoint(saved, tmp_path):
    algo, _ = saved
    old = str(tmp_path / "old")
    file = write_old_format(algo, old)
    before = open(file, "rb").read()
    new = str(tmp_path / "new")
    run = cli("convert-checkpoint", old, new)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"wrote {new} from {old}"
    assert open(file, "rb").read() == before and os.listdir(old) == ["checkpoint.pt"]  # the old one as it was
    assert sorted(os.listdir(new)) == FILES
    assert f"rlfleet convert-checkpoint {old} {new}" in open(os.path.join(new, CARD)).read()
    fresh = build()
    try:
        fresh.restore(new)
        assert_same(module_state(algo), module_state(fresh), "module")
        assert_same(optimizer_state(algo), optimizer_state(fresh), "optimizer")
        assert_same(algo.connector.get_state(), fresh.connector.get_state(), "connector")
        assert (fresh.iteration, fresh.env_steps, fresh.episodes, fresh.weights_version) == \
            (algo.iteration, algo.env_steps, algo.episodes, algo.weights_version)
    finally:
        fresh.stop()


def test_the_converter_refuses_bad_input_in_one_line_and_changes_nothing(saved, tmp_path):
    algo, path = saved
    old = str(tmp_path / "old")
    file = write_old_format(algo, old)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    format1 = tmp_path / "format1"
    format1.mkdir()
    state = torch.load(file, weights_only=True)
    state["format"] = 1
    torch.save(state, format1 / "checkpoint.pt")
    before = tree_of(tmp_path)
    cases = [((old, str(taken)), f"{str(taken)!r} exists: give a new directory"),
             ((str(tmp_path / "missing"), str(tmp_path / "new")), "no old checkpoint at"),
             ((str(format1), str(tmp_path / "new")), "has format 1, the converter reads 2"),
             ((path, str(tmp_path / "new")), "is a format-3 checkpoint already: nothing to convert")]
    for args, message in cases:
        run = cli("convert-checkpoint", *args)
        assert run.returncode == 2 and message in one_line(run), (args, run.stderr)
        assert one_line(run).startswith("convert_checkpoint.py: error: ")
    assert tree_of(tmp_path) == before


@pytest.mark.parametrize("args", [
    ["export", "--checkpoint", "{missing}"],
    ["evaluate", "--checkpoint", "{missing}", "--episodes", "1"],
    ["serve", "--checkpoint", "{missing}"],
    ["train", "--algo", "ppo", "--env", "CartPole-v1", "--restore", "{missing}"],
    ["export", "--checkpoint", "{file}"],
])
def test_a_bad_checkpoint_path_exits_2_in_one_line(tmp_path, args):
    (tmp_path / "file.txt").write_text("not a checkpoint")
    paths = {"missing": str(tmp_path / "no" / "checkpoint"), "file": str(tmp_path / "file.txt")}
    run = cli(*[a.format(**paths) for a in args])
    line = one_line(run)
    assert run.returncode == 2, run.stderr
    assert "no checkpoint at" in line or "is not a checkpoint" in line, line
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]
