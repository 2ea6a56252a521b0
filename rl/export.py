"""Export a trained control policy to ONNX: one file that holds the observation
normalisation, the policy's deterministic action (the distribution's mode, or the legal
argmax Q-value) and the action post-processing (clipping to a Box, a Discrete's start),
plus a JSON contract beside it, so the policy runs with onnxruntime alone.

The model takes one input per observation leaf, in dm-tree order (a Dict's keys sorted),
the action mask included where the env has one, each with a leading batch axis; it
returns one output per action leaf. The contract names them with their shapes and dtypes.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any

import numpy as np
import torch
import tree
from torch import nn

from rlfleet.rl.core import DISTRIBUTION, MEMORY, Q_VALUES, has_capability
from rlfleet.rl.models.distributions import mask_logits
from rlfleet.rl.inference import Policy, to_json
from rlfleet.rl.models.module import legal_actions
from rlfleet.envs.schema import space_from_schema, space_to_schema
from rlfleet.rl.spaces import leaf_spaces, space_structure

CONTRACT_FORMAT = "rlfleet-onnx-1"


class ExportError(ValueError):
    """A policy or an output path that cannot be exported."""


class DeployedPolicy(nn.Module):
    """normalise -> module -> deterministic action -> post-process, as one graph."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.module = policy.module
        self.memory = bool(policy.state_size)  # the state is the last input and the last output
        self.structure = space_structure(policy.observation_space)
        stats = policy.filter.statistics() if policy.filter is not None else [None] * len(leaf_spaces(policy.observation_space))
        self.clip = policy.filter.clip if policy.filter is not None else 0.0
        # Normalisation in float64, as the filter computes it, so actions match bit for bit.
        self.stats = [None if s is None else (torch.from_numpy(s[0]), torch.from_numpy(s[1])) for s in stats]
        self.post = []
        for space in leaf_spaces(policy.action_space):
            if hasattr(space, "low") and space.dtype.kind == "f":
                self.post.append(("clip", torch.from_numpy(space.low), torch.from_numpy(space.high)))
            elif hasattr(space, "start") and np.any(space.start != 0):
                self.post.append(("shift", torch.as_tensor(space.start), None))
            else:
                self.post.append(None)

    def forward(self, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = None
        if self.memory:
            *leaves, state = leaves
        normalised = []
        for x, stat in zip(leaves, self.stats):
            if stat is not None:
                mean, std = stat
                x = ((x.double() - mean) / std).clamp(-self.clip, self.clip).float()
            normalised.append(x)
        obs = tree.unflatten_as(self.structure, normalised)
        greedy = self.module.greedy_actions(obs, state) if self.memory else self.module.greedy_actions(obs)
        if self.memory:
            greedy, state = greedy
        actions = []
        for action, post in zip(greedy, self.post):
            if post is not None and post[0] == "clip":
                action = torch.maximum(torch.minimum(action, post[2]), post[1])
            elif post is not None:
                action = action + post[1]
            actions.append(action)
        return (*actions, state) if self.memory else tuple(actions)


def _leaf_names(prefix: str, structure: Any) -> list[str]:
    paths = [path for path, _ in tree.flatten_with_path(structure)]
    return [prefix if not path else prefix + "." + ".".join(str(p) for p in path) for path in paths]


def export_onnx(policy: Policy, path: str) -> dict[str, Any]:
    """Write the ONNX model to ``path`` (and the contract to ``path`` + ".json", both via
    a temporary file and a rename); returns the contract."""
    _check_out(path, ".onnx")
    model = DeployedPolicy(policy).eval()
    obs_spaces = leaf_spaces(policy.observation_space)
    act_spaces = leaf_spaces(policy.action_space)
    input_names = _leaf_names("obs", space_structure(policy.observation_space))
    output_names = _leaf_names("action", space_structure(policy.action_space))
    example = tuple(torch.from_numpy(np.stack([s.sample(), s.sample()])) for s in obs_spaces)
    memory = None
    if policy.state_size:  # the recurrent state in and out, explicit (rl/core.py, "Memory")
        memory = {"input": "state", "output": "state_out", "size": policy.state_size, "kind": policy.spec.memory,
                  "initial": "zeros", "reset": "zeros at every episode start; feed state_out back as state"}
        example += (torch.zeros(2, policy.state_size),)
        input_names, output_names = input_names + ["state"], output_names + ["state_out"]
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    tmp = path + ".tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, tmp, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, dynamo=False, opset_version=17)
    contract = {
        "format": CONTRACT_FORMAT,
        "algorithm": policy.algo, "env": policy.env, "env_config": to_json(policy.env_config),
        "weights_version": policy.weights_version,
        "env_steps": policy.env_steps, "deterministic": True,
        "inputs": [{"name": n, "shape": ["batch", *s.shape], "dtype": str(s.dtype)} for n, s in zip(input_names, obs_spaces)]
        + ([{"name": "state", "shape": ["batch", policy.state_size], "dtype": "float32"}] if memory else []),
        "outputs": [{"name": n, "shape": ["batch", *_action_shape(s)], "dtype": _action_dtype(s)}
                    for n, s in zip(output_names, act_spaces)]
        + ([{"name": "state_out", "shape": ["batch", policy.state_size], "dtype": "float32"}] if memory else []),
        **({"memory": memory} if memory else {}),
        "observation_space": space_to_schema(policy.observation_space),
        "action_space": space_to_schema(policy.action_space),
        "normalization": "inside the model" if policy.filter is not None else "none",
    }
    with open(path + ".json.tmp", "w", encoding="utf-8") as f:
        json.dump(contract, f, indent=2)
    os.replace(tmp, path)
    os.replace(path + ".json.tmp", path + ".json")
    return contract


def read_contract(path: str) -> dict[str, Any]:
    """The JSON contract :func:`export_onnx` wrote at ``path``, checked: a file that is not
    one (missing, not JSON, another format, missing keys, a bad space) is refused in one line."""
    try:
        with open(path, encoding="utf-8") as f:
            contract = json.load(f)
    except OSError as e:
        raise ExportError(f"no contract {path!r} beside the model ({e.strerror}): export.py writes it next to "
                          "the .onnx file") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ExportError(f"contract {path} is not JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(contract, dict) or contract.get("format") != CONTRACT_FORMAT:
        found = f"format {contract.get('format')!r}" if isinstance(contract, dict) else f"a {type(contract).__name__}"
        raise ExportError(f"contract {path} is not an rlfleet export contract ({found}, expected format "
                          f"{CONTRACT_FORMAT!r})")
    missing = sorted({"env", "weights_version", "inputs", "action_space"} - set(contract))
    if missing:
        raise ExportError(f"contract {path} lacks {', '.join(map(repr, missing))}: export the model again")
    inputs = contract["inputs"]
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in inputs):
        raise ExportError(f"contract {path}: 'inputs' must be a list of {{\"name\": ..., \"dtype\": ...}}, "
                          f"got {inputs!r}")
    for i in inputs:
        try:
            if not isinstance(i.get("dtype"), str):
                raise TypeError
            np.dtype(i["dtype"])
        except (TypeError, ValueError):
            raise ExportError(f"contract {path}: input {i['name']!r} has no dtype numpy knows, got "
                              f"{i.get('dtype')!r}") from None
    try:
        space_from_schema(contract["action_space"])
    except ValueError as e:  # SpaceSchemaError
        raise ExportError(f"contract {path}: 'action_space': {str(e).splitlines()[0]}") from None
    return contract


def _check_out(path: str, suffix: str) -> None:
    """The same refusals for every format, before anything is written: an output goes into
    a directory that exists (a typo in it is not silently created)."""
    if not path.endswith(suffix):
        raise ExportError(f"export path {path!r} must end in {suffix}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ExportError(f"export path {path!r}: no directory {directory!r}")
    if os.path.isdir(path):
        raise ExportError(f"export path {path!r} is a directory: name the file to write")


def _action_shape(space: Any) -> list[int]:
    return [] if space.shape == () else list(space.shape)


def _action_dtype(space: Any) -> str:
    return "int64" if space.dtype.kind in "iu" else "float32"


def export_torchscript(policy: Policy, path: str) -> None:
    """The same graph as :func:`export_onnx`, traced to TorchScript (``torch.jit.load``)."""
    _check_out(path, ".pt")
    model = DeployedPolicy(policy).eval()
    example = tuple(torch.from_numpy(np.stack([s.sample(), s.sample()])) for s in leaf_spaces(policy.observation_space))
    if policy.state_size:  # the state as the last input and output, as in the ONNX graph
        example += (torch.zeros(2, policy.state_size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    tmp = path + ".tmp"
    traced.save(tmp)
    os.replace(tmp, path)


class SamplingPolicy(nn.Module):
    """For client-side inference: observation leaves -> (what the client samples from,
    illegal actions at the float minimum; V(s)). An actor-critic gives its distribution's
    inputs and its value; a Q-network (DQN) its Q-values and zeros for the value it has
    not. The client samples (and computes log-probabilities) itself (envs/external/client.py)."""

    def __init__(self, module: nn.Module, observation_space: Any) -> None:
        super().__init__()
        self.module = module
        self.structure = space_structure(observation_space)

    def forward(self, *leaves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs = tree.unflatten_as(self.structure, list(leaves))
        if has_capability(self.module, DISTRIBUTION):
            feats = self.module.features(obs)
            inputs, values = self.module.dist_inputs(feats), self.module.values(feats)
        else:
            inputs = self.module.forward_train(obs)  # Q(s, .)
            values = torch.zeros(inputs.shape[0])
        legal = legal_actions(obs)
        return (inputs if legal is None else mask_logits(inputs, legal)), values


def sampling_policy_onnx(module: nn.Module, observation_space: Any, action_space: Any) -> tuple[bytes, dict[str, Any]]:
    """The ONNX bytes of the policy a client samples from and its contract: an actor-critic's
    distribution (Discrete, MultiDiscrete or 1-D Box actions), or a Q-network's
    epsilon-greedy choice at the module's current epsilon."""
    if len(leaf_spaces(action_space)) != 1:
        raise ExportError("client-side inference needs one action leaf")
    if has_capability(module, MEMORY):
        raise ExportError("client-side inference of a policy with memory is not built (the server carries its state)")
    if has_capability(module, DISTRIBUTION):
        extra: dict[str, Any] = {}
        kind = {"Discrete": "categorical", "MultiDiscrete": "multi_categorical", "Box": "diag_gaussian"}[
            type(action_space).__name__]
    elif has_capability(module, Q_VALUES):
        kind, extra = "epsilon_greedy", {"epsilon": float(module.epsilon)}
    else:
        raise ExportError(f"client-side inference needs an actor-critic or a Q-network, not {type(module).__name__}")
    names = _leaf_names("obs", space_structure(observation_space))
    example = tuple(torch.from_numpy(np.stack([s.sample(), s.sample()])) for s in leaf_spaces(observation_space))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SamplingPolicy(module, observation_space).eval(), example, buffer, input_names=names,
                          output_names=["dist_inputs", "value"], dynamo=False, opset_version=17,
                          dynamic_axes={n: {0: "batch"} for n in names + ["dist_inputs", "value"]})
    contract = {"format": CONTRACT_FORMAT, "distribution": kind, **extra,
                "inputs": [{"name": n, "dtype": str(s.dtype)} for n, s in zip(names, leaf_spaces(observation_space))],
                "action_space": space_to_schema(action_space)}
    return buffer.getvalue(), contract
