"""RLModule: a torch policy/value network built from the spaces.

Each observation leaf gets an encoder (MLP input for vectors and one-hots, a CNN for
images); the features are concatenated and fed to a policy MLP and a value MLP (separate by
default: PPO on classic control learns faster with them apart). Acting and training use
separate entry points: the acting path runs once per env step without autograd, with the
policy and value MLPs side by side in one matrix product per layer (:func:`side_by_side`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tree
from gymnasium import spaces
from torch import nn

from rlfleet.rl.batch import flatten_time
from rlfleet.rl.core import ACTION_MASK, DISTRIBUTION, VALUES
from rlfleet.rl.models.memory import attach_core
from rlfleet.rl.models.spec import ModuleSpec
from rlfleet.rl.models.distributions import ActionDistribution, Categorical, DiagGaussian, MultiCategorical, dist_input_size
from rlfleet.envs.schema import space_from_schema, space_to_schema
from rlfleet.rl.spaces import check_spaces, is_image, leaf_spaces

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}
ACTIVATION_FNS = {"tanh": torch.tanh, "relu": torch.relu, "elu": nn.functional.elu, "silu": nn.functional.silu}


def spec_to_dict(spec: ModuleSpec) -> dict[str, Any]:
    """A spec as plain data (for checkpoints): its class and fields, spaces as schemas."""
    fields = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        fields[field.name] = (space_to_schema(value) if isinstance(value, gym.Space)
                              else list(value) if isinstance(value, tuple) else value)
    return {"class": f"{type(spec).__module__}:{type(spec).__qualname__}", "fields": fields}


# Where spec classes lived when older checkpoints named them (before rl/models/).
MOVED = {"rlfleet.rl.module": "rlfleet.rl.models.module", "rlfleet.rl.module_spec": "rlfleet.rl.models.spec"}


def spec_from_dict(data: dict[str, Any]) -> ModuleSpec:
    """Inverse of :func:`spec_to_dict`; only spec classes of this library are imported."""
    module_name, _, class_name = str(data.get("class", "")).partition(":")
    module_name = MOVED.get(module_name, module_name)
    if not module_name.startswith("rlfleet."):
        raise ValueError(f"module spec class {data.get('class')!r} is not one of rlfleet's")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModuleSpec)):
        raise ValueError(f"{data['class']!r} is not a ModuleSpec class")
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name not in data["fields"]:
            continue  # a field added later keeps its default
        value = data["fields"][field.name]
        if field.name in ("observation_space", "action_space"):
            value = space_from_schema(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def _init(layer: nn.Module, gain: float) -> nn.Module:
    # Orthogonal init with small policy-head gain: near-uniform initial policy (SB3/CleanRL).
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


def mlp(in_dim: int, hidden: tuple[int, ...], activation: str) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [_init(nn.Linear(in_dim, width), math.sqrt(2)), ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers), in_dim


def run_layers(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` for a Linear or a Sequential of plain layers, through each layer's
    ``forward``: the same operations without ``nn.Module.__call__``'s hook machinery,
    which nothing here uses and which costs more than a 64-wide layer's maths on the
    acting path (run once per env step)."""
    if isinstance(layers, nn.Sequential):
        for layer in layers:
            x = layer.forward(x)
        return x
    return layers.forward(x)


def side_by_side(pi: list[nn.Linear], vf: list[nn.Linear]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two MLPs that read the same input (the policy's and the value's, each ending in its
    head) as one MLP computing both at once: a layer both share is kept, the first layer
    after the shared ones has the two weight matrices stacked (both read the same input),
    every later layer is block-diagonal (each half reads only its own half). One matrix
    product per depth instead of two; the output is the policy head's then the value's.
    (weight, bias) pairs; those of two layers are copies, to rebuild when the parameters change."""
    layers, apart = [], False
    for p, v in zip(pi, vf):
        if p is v:
            layers.append((p.weight.detach(), p.bias.detach()))
            continue
        weight = torch.block_diag(p.weight, v.weight) if apart else torch.cat([p.weight, v.weight])
        layers.append((weight.detach(), torch.cat([p.bias, v.bias]).detach()))
        apart = True
    return layers


def is_channels_last(shape: tuple[int, ...]) -> bool:
    """Whether an image is HWC: a square frame says which axis is the channels (MinAtar's
    (10, 10, 6), Atari's stacked (4, 84, 84)); otherwise the channels are the smaller end."""
    if shape[0] == shape[1] != shape[2]:
        return True
    if shape[1] == shape[2] != shape[0]:
        return False
    return shape[-1] < shape[0]


class LeafEncoder(nn.Module):
    """Turns one observation leaf (B, ...) into float features (B, F)."""

    def __init__(self, space: gym.Space) -> None:
        super().__init__()
        self.space = space
        self.cnn: nn.Module | None = None
        # A grid smaller than the light trunk's two stride-2 3x3 convolutions can see (a
        # 3x3 board) is encoded flat, like a vector.
        if is_image(space) and min(sorted(space.shape)[1:]) >= 7:
            channels_last = is_channels_last(space.shape)
            self.channels_last = channels_last
            c = space.shape[-1] if channels_last else space.shape[0]
            self.scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
            side = min(space.shape[:2] if channels_last else space.shape[1:])
            big = side >= 64
            # The rule: Nature-DQN's trunk for Atari-sized frames (side >= 64); two stride-2
            # 3x3 convolutions for mid-sized ones; stride 1 below 24 pixels, where a grid cell
            # is a pixel (MinAtar's 10x10, MiniGrid's 7x7 view): stride 2 would leave a 10x10
            # frame 1x1 after two layers. PPO's defaults on MinAtar/Breakout-v1 at 1M env steps,
            # final / best 20-episode mean: stride 2 2.9 / 3.8, stride 1 8.7 / 10.0 (issue 31).
            stride = 1 if side < 24 else 2
            convs = [(32, 8, 4), (64, 4, 2), (64, 3, 1)] if big else [(16, 3, stride), (32, 3, stride)]
            layers: list[nn.Module] = []
            for out_c, k, s in convs:
                layers += [_init(nn.Conv2d(c, out_c, k, s), math.sqrt(2)), nn.ReLU()]
                c = out_c
            layers.append(nn.Flatten())
            trunk = nn.Sequential(*layers)
            with torch.no_grad():
                n = trunk(torch.zeros(1, *self._chw(space.shape))).shape[-1]
            width = 512 if big else 256
            self.cnn = nn.Sequential(trunk, _init(nn.Linear(n, width), math.sqrt(2)), nn.ReLU())
            self.out_dim = width
        elif isinstance(space, spaces.Discrete):
            self.out_dim = int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            self.out_dim = int(space.nvec.sum())
        else:
            self.out_dim = int(np.prod(space.shape))

    def _chw(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[2], shape[0], shape[1]) if self.channels_last else tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        space = self.space
        if self.cnn is not None:
            x = x.float() * self.scale
            if self.channels_last:
                x = x.permute(0, 3, 1, 2)
            return self.cnn(x)
        if isinstance(space, spaces.Discrete):
            return nn.functional.one_hot(x.long() - int(space.start), int(space.n)).float()
        if isinstance(space, spaces.MultiDiscrete):
            parts = [
                nn.functional.one_hot(x[..., i].long() - int(space.start[i]), int(n)).float()
                for i, n in enumerate(space.nvec.tolist())
            ]
            return torch.cat(parts, -1)
        return x.reshape(x.shape[0], self.out_dim).float()  # (not -1: an empty shard has 0 rows)


def legal_actions(obs: Any) -> torch.Tensor | None:
    """The observation's action mask as bool (B, n), or None (rl/core.py, "Action masks")."""
    return obs[ACTION_MASK].bool() if isinstance(obs, dict) and ACTION_MASK in obs else None


class ObsEncoder(nn.Module):
    """All observation leaves encoded and concatenated: (nested obs) -> (B, F). Built on
    ``spec.encoder_space``: an action mask is left out unless the spec asks for it."""

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__()
        space = spec.encoder_space
        self.skip_mask = space is not spec.observation_space
        self.encoders = nn.ModuleList(LeafEncoder(s) for s in leaf_spaces(space))
        self.out_dim = sum(e.out_dim for e in self.encoders)

    def forward(self, obs: Any) -> torch.Tensor:
        if self.skip_mask:
            obs = {key: value for key, value in obs.items() if key != ACTION_MASK}
        if len(self.encoders) == 1:
            return self.encoders[0].forward(obs if isinstance(obs, torch.Tensor) else tree.flatten(obs)[0])
        leaves = tree.flatten(obs)
        return torch.cat([enc.forward(x) for enc, x in zip(self.encoders, leaves)], -1)  # (B, F)


class RLModule(nn.Module):
    """Policy and value network for any supported (nested) observation and action space."""

    capabilities = frozenset({VALUES, DISTRIBUTION})

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__()
        check_spaces(spec.observation_space, spec.action_space, spec.env_name)
        self.spec = spec
        self.action_space = spec.action_space
        self.encoder = ObsEncoder(spec)
        feat_dim = attach_core(self, spec, self.encoder.out_dim)  # with memory, the MLPs read the core
        self.pi_mlp, pi_dim = mlp(feat_dim, spec.hidden_sizes, spec.activation)
        if spec.shared_encoder:
            self.vf_mlp, vf_dim = self.pi_mlp, pi_dim
        else:
            self.vf_mlp, vf_dim = mlp(feat_dim, spec.hidden_sizes, spec.activation)
        self.vf_head = _init(nn.Linear(vf_dim, 1), 1.0)
        leaves = leaf_spaces(spec.action_space)
        # Box leaves get a state-independent log-std (a parameter, as in SB3 and CleanRL).
        n_logits = sum(dist_input_size(s) // (2 if isinstance(s, spaces.Box) else 1) for s in leaves)
        self.pi_head = _init(nn.Linear(pi_dim, n_logits), 0.01)
        self.box_slots = [isinstance(s, spaces.Box) for s in leaves]
        self.head_sizes = [dist_input_size(s) // (2 if b else 1) for s, b in zip(leaves, self.box_slots)]
        self.log_std = nn.Parameter(torch.zeros(sum(n for n, b in zip(self.head_sizes, self.box_slots) if b)))
        self._params = list(self.parameters())  # walking the modules each step costs more than the maths
        self._acting: tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    # -- shared pieces ---------------------------------------------------------------
    def features(self, obs: Any) -> torch.Tensor:
        return self.encoder.forward(obs)  # (B, F)

    def dist_inputs(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head_to_dist_inputs(run_layers(self.pi_head, run_layers(self.pi_mlp, feats)))

    def head_to_dist_inputs(self, out: torch.Tensor) -> torch.Tensor:
        """The policy head's output with each Box leaf's log-std next to its mean."""
        if not any(self.box_slots):
            return out
        chunks, std_at = [], 0
        for chunk, is_box in zip(torch.split(out, self.head_sizes, -1), self.box_slots):
            if is_box:
                d = chunk.shape[-1]
                chunks += [chunk, self.log_std[std_at : std_at + d].expand_as(chunk)]
                std_at += d
            else:
                chunks.append(chunk)
        return torch.cat(chunks, -1)

    def values(self, feats: torch.Tensor) -> torch.Tensor:
        return run_layers(self.vf_head, run_layers(self.vf_mlp, feats)).squeeze(-1)  # (B,)

    def dist(self, inputs: torch.Tensor, obs: Any) -> ActionDistribution:
        """The action distribution, restricted to the legal actions where ``obs`` has a mask."""
        return ActionDistribution(inputs, self.action_space, legal_actions(obs))

    def step_features(self, obs: Any, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Acting: (features (B, F'), next state) with the core stepped once (no memory: as is)."""
        feats = self.features(obs)
        if self.core is None:
            return feats, None
        return self.core.forward_step(feats, state)

    # -- training path ---------------------------------------------------------------
    def forward_train(self, obs: Any, state: torch.Tensor | None = None, is_first: torch.Tensor | None = None,
                      **cut: Any) -> tuple[ActionDistribution, torch.Tensor]:
        """The action distribution and values of a batch of rows. With memory, ``obs`` is
        N sequences (N, L, ...) run from their start states (N, S) with the state zeroed at
        ``is_first`` (N, L) (``cut``: see ``MemoryCore.forward_sequence``); the distribution
        and values are then over their N * L steps, sequence by sequence (rows n * L + t)."""
        if self.core is None:
            feats = self.features(obs)
            return self.dist(self.dist_inputs(feats), obs), self.values(feats)
        rows, feats, _ = self.sequence_features(obs, state, is_first, **cut)
        return self.dist(self.dist_inputs(feats), rows), self.values(feats)

    def sequence_features(self, obs: Any, state: torch.Tensor, is_first: torch.Tensor,
                          **restarts: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """N sequences (N, L, ...) through the encoder and the core (``restarts``: see
        ``MemoryCore.forward_sequence``): (their observations as rows (N * L, ...), the
        features of those rows (N * L, H), the state after each step (N, L, S))."""
        n, length = is_first.shape
        rows = flatten_time(obs)  # (N, L, ...) -> (N * L, ...)
        feats = self.features(rows).reshape(n, length, -1)
        feats, states = self.core.forward_sequence(feats, state, is_first, **restarts)
        return rows, feats.reshape(n * length, -1), states

    # -- acting paths (no autograd) ----------------------------------------------------
    @torch.inference_mode()
    def forward_exploration(self, obs: Any, state: torch.Tensor | None = None) -> dict[str, Any]:
        """Sample actions: {"actions": leaves, "logp": (B,), "values": (B,)}, and with
        memory the next ``state`` (B, S)."""
        out, state = self.step_features(obs, state)
        layers = self.acting_layers()
        act = ACTIVATION_FNS[self.spec.activation]
        for weight, bias in layers[:-1]:
            out = act(nn.functional.linear(out, weight, bias))
        out = nn.functional.linear(out, *layers[-1])  # (B, policy head + 1)
        dist = self.dist(self.head_to_dist_inputs(out[:, :-1]), obs)
        actions = dist.sample()
        result = {"actions": actions, "logp": dist.logp(actions), "values": out[:, -1]}
        if state is not None:
            result["state"] = state
        return result

    def acting_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The policy and value MLPs side by side (:func:`side_by_side`), rebuilt when a
        parameter was changed in place (its version counter moved: loaded weights, an
        optimiser step) or replaced."""
        key = tuple((p._version, p.data_ptr()) for p in self._params)
        if self._acting is None or self._acting[0] != key:
            pi = [layer for layer in self.pi_mlp if isinstance(layer, nn.Linear)] + [self.pi_head]
            vf = [layer for layer in self.vf_mlp if isinstance(layer, nn.Linear)] + [self.vf_head]
            with torch.no_grad():
                self._acting = key, side_by_side(pi, vf)
        return self._acting[1]

    @torch.inference_mode()
    def forward_inference(self, obs: Any, state: torch.Tensor | None = None) -> Any:
        """Greedy actions, for evaluation and deployment; with memory (actions, next state)."""
        return self.greedy_actions(obs, state)

    def greedy_actions(self, obs: Any, state: torch.Tensor | None = None) -> Any:
        """The distribution's mode (the legal argmax where masked), with autograd as the
        caller has it (an ONNX export traces this); with memory (actions, next state)."""
        feats, state = self.step_features(obs, state)
        actions = self.dist(self.dist_inputs(feats), obs).deterministic()
        return actions if self.core is None else (actions, state)

    @torch.inference_mode()
    def compute_values(self, obs: Any, state: torch.Tensor | None = None) -> torch.Tensor:
        return self.values(self.step_features(obs, state)[0])

    @torch.inference_mode()
    def forward_details(self, obs: Any, state: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What serving returns on request besides the action: the probabilities of
        discrete actions (their leaves side by side, 0 where masked), the mean and log-std
        of continuous ones, and the value."""
        feats = self.step_features(obs, state)[0]
        dist = self.dist(self.dist_inputs(feats), obs)
        probs = [d.logits.exp() for d in dist.leaves if isinstance(d, Categorical)]
        probs += [c.logits.exp() for d in dist.leaves if isinstance(d, MultiCategorical) for c in d.cats]
        gaussians = [d for d in dist.leaves if isinstance(d, DiagGaussian)]
        out = {"value": self.values(feats)}
        if probs:
            out["action_probs"] = torch.cat(probs, -1)
        if gaussians:
            out["action_mean"] = torch.cat([d.mean for d in gaussians], -1)
            out["action_log_std"] = torch.cat([d.log_std for d in gaussians], -1)
        return out


def to_tensor(obs: Any) -> Any:
    return torch.from_numpy(obs) if isinstance(obs, np.ndarray) else tree.map_structure(torch.from_numpy, obs)


class TorchActing:
    """The acting interface of env runners (numpy in, numpy out; see rl/models/numpy_policy.py)
    over a torch module: ``forward_exploration``, ``compute_values``, ``forward_inference``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()
        self.state_size = getattr(module, "state_size", 0)
        """Floats of recurrent state per env (0: no memory; rl/core.py, "Memory")."""

    def _state(self, state: np.ndarray | None) -> dict[str, Any]:
        return {} if state is None else {"state": torch.from_numpy(np.ascontiguousarray(state, np.float32))}

    def explore(self, obs: Any, state: np.ndarray | None = None) -> dict[str, Any]:
        out = self.module.forward_exploration(to_tensor(obs), **self._state(state))
        return {"actions": [a.numpy() for a in out.pop("actions")], **{k: v.numpy() for k, v in out.items()}}

    def values(self, obs: Any, state: np.ndarray | None = None) -> np.ndarray:
        return self.module.compute_values(to_tensor(obs), **self._state(state)).numpy()

    def greedy(self, obs: Any, state: np.ndarray | None = None) -> Any:
        out = self.module.forward_inference(to_tensor(obs), **self._state(state))
        if state is None:
            return [a.numpy() for a in out]
        return [a.numpy() for a in out[0]], out[1].numpy()

    def load(self, weights: dict[str, np.ndarray]) -> None:
        # From Ray's object store the arrays are read-only views (zero-copy); load_state_dict
        # copies them into the module, so no tensor ever writes to them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
