"""ONNX export: the exported file alone (onnxruntime in a process where torch and rlfleet
cannot be imported) acts like the library on observations from rollouts of trained
policies, normalisation, masks and action clipping included."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tree

from rlfleet.envs import make_env_creator
from rlfleet.rl.inference import Policy
from tests.extras import require_extra
from tests.serving.conftest import rollout_observations

require_extra("export", "onnxruntime")

# Runs in a fresh interpreter: importing torch or rlfleet there raises.
RUNNER = r"""
import json, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "rlfleet"):
            raise ImportError(f"{name} may not be imported here")
sys.meta_path.insert(0, Blocked())
import numpy as np, onnxruntime as ort
model, inputs, outputs = sys.argv[1:4]
contract = json.load(open(model + ".json"))
session = ort.InferenceSession(model)
data = np.load(inputs)
feed = {i["name"]: data[i["name"]].astype(i["dtype"]) for i in contract["inputs"]}
results = session.run([o["name"] for o in contract["outputs"]], feed)
np.savez(outputs, **{o["name"]: r for o, r in zip(contract["outputs"], results)})
print(json.dumps({"torch_blocked": "torch" not in sys.modules}))
"""


@pytest.mark.parametrize("name", ["ppo-pendulum", "ppo-cartpole", "ppo-maze", "dqn-maze", "impala-cartpole",
                                  "ppo-nested", "sac-pendulum", "sac-maze"])
def test_the_onnx_file_alone_acts_like_the_library(name, checkpoints, tmp_path):
    checkpoint = checkpoints(name)
    model = str(tmp_path / "policy.onnx")
    done = subprocess.run([sys.executable, "scripts/export.py", "--checkpoint", checkpoint, "--out", model],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr
    contract = json.load(open(model + ".json"))
    policy = Policy.load(checkpoint)
    assert contract["algorithm"] == policy.algo and contract["weights_version"] == policy.weights_version
    if name == "ppo-pendulum":  # a non-trivial normalisation state is inside the model
        mean, std = policy.filter.statistics()[0]
        assert np.abs(mean).max() > 0.05 and np.abs(std - 1).max() > 0.05
        assert contract["normalization"] == "inside the model"
    observations = rollout_observations(checkpoint, 1000)
    batch = tree.map_structure(lambda *xs: np.stack(xs), *observations)
    leaves = tree.flatten(batch)
    np.savez(tmp_path / "inputs.npz", **{i["name"]: x for i, x in zip(contract["inputs"], leaves)})
    ran = subprocess.run([sys.executable, "-c", RUNNER, model, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["torch_blocked"]
    exported = np.load(tmp_path / "out.npz")
    expected = tree.flatten(policy.act(batch)["actions"])
    for output, want in zip(contract["outputs"], expected):
        got = exported[output["name"]]
        assert got.shape == want.shape
        if output["dtype"] == "float32":
            assert np.abs(got - want).max() <= 1e-5
        else:
            np.testing.assert_array_equal(got, want)
    if "action_mask" in batch:  # every exported action is legal
        np.testing.assert_array_equal(batch["action_mask"][np.arange(1000), exported["action"]], 1)


def test_export_keeps_an_existing_file_and_names_the_fix(checkpoints, tmp_path):
    out = tmp_path / "policy.onnx"
    out.write_text("mine")
    done = subprocess.run([sys.executable, "scripts/export.py", "--checkpoint", checkpoints("ppo-cartpole"), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and out.read_text() == "mine"
    assert done.stderr.strip().count("\n") == 0 and "exists; give --overwrite" in done.stderr
    missing = subprocess.run([sys.executable, "scripts/export.py", "--checkpoint", str(tmp_path / "nothing")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr and missing.stderr.count("\n") == 1


def test_torchscript_export_acts_like_the_library(checkpoints, tmp_path):
    import torch

    checkpoint = checkpoints("ppo-pendulum")
    out = tmp_path / "policy.pt"
    done = subprocess.run([sys.executable, "scripts/export.py", "--checkpoint", checkpoint, "--format", "torchscript",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    obs = np.stack(rollout_observations(checkpoint, 200))
    with torch.no_grad():
        got = torch.jit.load(str(out))(torch.from_numpy(obs))[0].numpy()
    assert np.abs(got - Policy.load(checkpoint).act(obs)["actions"]).max() <= 1e-5


@pytest.mark.parametrize("name", ["ppo-lstm-maze", "ppo-gru-pendulum"])
def test_a_recurrent_onnx_model_stepped_through_episodes_equals_the_torch_module(name, checkpoints, tmp_path):
    # The state is an explicit input and output: fed back step by step (zeros at each
    # episode start), the exported model acts as the library's policy and carries the
    # same state, to 1e-5.
    import onnxruntime

    checkpoint = checkpoints(name)
    model = str(tmp_path / "policy.onnx")
    subprocess.run([sys.executable, "scripts/export.py", "--checkpoint", checkpoint, "--out", model], check=True,
                   capture_output=True)
    contract = json.load(open(model + ".json"))
    policy = Policy.load(checkpoint)
    assert contract["memory"]["input"] == "state" and contract["memory"]["size"] == policy.state_size
    assert contract["inputs"][-1]["name"] == "state" and contract["outputs"][-1]["name"] == "state_out"
    session = onnxruntime.InferenceSession(model)
    env = make_env_creator(policy.env, policy.env_config)()
    steps, largest = 0, 0.0
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        state, onnx_state, done = None, np.zeros((1, policy.state_size), np.float32), False
        while not done and steps < 300:
            batch = tree.map_structure(lambda x: np.asarray(x)[None], obs)
            ours = policy.act(batch, state=state)
            feed = {i["name"]: x.astype(i["dtype"]) for i, x in zip(contract["inputs"], tree.flatten(batch))}
            *actions, onnx_state = session.run(None, {**feed, "state": onnx_state})
            np.testing.assert_allclose(onnx_state, ours["state"], atol=1e-5)
            for got, want in zip(actions, tree.flatten(ours["actions"])):
                np.testing.assert_allclose(got, want, atol=1e-5)
            state, largest = ours["state"], max(largest, float(np.abs(ours["state"]).max()))
            obs, _, terminated, truncated, _ = env.step(tree.map_structure(lambda x: x[0], ours["actions"]))
            done, steps = terminated or truncated, steps + 1
    assert steps >= 100 and largest > 1e-2  # a real state was carried


@pytest.mark.parametrize("name", ["ppo-pendulum", "ppo-cartpole", "sac-pendulum", "ppo-lstm-maze", "ppo-gru-pendulum"])
def test_evaluating_the_onnx_file_gives_the_checkpoints_returns(name, checkpoints, tmp_path):
    checkpoint = checkpoints(name)
    model = str(tmp_path / "policy.onnx")
    subprocess.run([sys.executable, "scripts/export.py", "--checkpoint", checkpoint, "--out", model], check=True,
                   capture_output=True)
    runs = {}
    for flag, source in (("--onnx", model), ("--checkpoint", checkpoint)):
        done = subprocess.run([sys.executable, "scripts/evaluate.py", flag, source, "--episodes", "4", "--seed", "3",
                               "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        runs[flag] = json.loads(done.stdout)["returns"]
    if name in ("ppo-cartpole", "ppo-lstm-maze"):  # discrete actions: the same episodes exactly
        assert runs["--onnx"] == runs["--checkpoint"]
    else:  # continuous actions agree to float32 rounding (<= 1e-5), and so do the returns
        np.testing.assert_allclose(runs["--onnx"], runs["--checkpoint"], rtol=1e-5)
