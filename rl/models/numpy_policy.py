"""Acting without torch: the default actor-critic's forward pass in numpy, for env runners.

A runner only acts. For the default MLP actor-critic (rl/models/module.py) acting is a few small
matrix products and a draw, which numpy does as fast as torch; doing it here keeps torch
out of runner processes, which saves about 150 MiB and most of a second of start-up per
runner (``scripts/bench.py memory`` and ``startup``). The weights arrive as the numpy
state dict the learner broadcasts. Anything this file does not cover (image encoders,
Q-networks, user modules) acts through torch (``rl/models/module.py`` ``TorchActing``).

This module must not import torch, directly or through what it imports.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import tree
from gymnasium import spaces

from rlfleet.rl.core import ACTION_MASK
from rlfleet.rl.models.spec import GATES
from rlfleet.rl.spaces import is_image, leaf_spaces

_LOG_2PI = math.log(2.0 * math.pi)
_TINY = np.finfo(np.float32).tiny
_LOWEST = np.finfo(np.float32).min

ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
}


def _flat_leaf(space: gym.Space) -> bool:
    """A leaf the torch encoder reads without parameters (anything but an image it gives a
    CNN): a vector, a small grid, a one-hot."""
    return not (is_image(space) and min(sorted(space.shape)[1:]) >= 7)


def numpy_covers(spec: Any) -> bool:
    """Whether a ModuleSpec's default module acts here (flat observation leaves, Discrete /
    MultiDiscrete / 1-D Box actions, a known activation)."""
    obs_leaves = leaf_spaces(spec.encoder_space)
    act_leaves = leaf_spaces(spec.action_space)
    return (spec.activation in ACTIVATIONS and all(_flat_leaf(s) for s in obs_leaves)
            and all(isinstance(s, (spaces.Discrete, spaces.MultiDiscrete))
                    or (isinstance(s, spaces.Box) and len(s.shape) == 1) for s in act_leaves))


class NumpyPolicy:
    """The acting interface of env runners (numpy in, numpy out): ``explore``, ``values``,
    ``greedy`` and ``load``; the same maths as ``RLModule``'s acting path."""

    def __init__(self, spec: Any, seed: int = 0) -> None:
        """``spec``: a ModuleSpec that :func:`numpy_covers`."""
        self.spec = spec
        enc_space = spec.encoder_space
        self.skip_mask = enc_space is not spec.observation_space
        self.obs_leaves = leaf_spaces(enc_space)
        self.act_leaves = leaf_spaces(spec.action_space)
        self.act = ACTIVATIONS[spec.activation]
        self.head_sizes = [int(s.n) if isinstance(s, spaces.Discrete) else int(s.nvec.sum())
                           if isinstance(s, spaces.MultiDiscrete) else int(s.shape[0]) for s in self.act_leaves]
        self.head_at = np.cumsum([0] + self.head_sizes).tolist()
        self.memory, self.memory_size = spec.memory, spec.memory_size
        self.state_size = spec.state_size
        """Floats of recurrent state per env (0: no memory)."""
        self.core: tuple[np.ndarray, ...] | None = None  # (W_ih.T, b_ih, W_hh.T, b_hh)
        self.rng = np.random.default_rng(seed)  # draws the initial weights, then the actions
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        self.log_std = np.zeros(0, np.float32)
        self.load(self._initial_weights(self.rng))

    # -- weights -------------------------------------------------------------------------
    def _keys(self) -> list[tuple[str, str | None]]:
        """(policy layer, value layer) names per depth; None where the value MLP shares
        the policy's layer."""
        depth = len(self.spec.hidden_sizes)
        vf = [None if self.spec.shared_encoder else f"vf_mlp.{2 * i}" for i in range(depth)]
        return [(f"pi_mlp.{2 * i}", v) for i, v in enumerate(vf)] + [("pi_head", "vf_head")]

    def _initial_weights(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Weights drawn like ``RLModule``'s (orthogonal, gains sqrt 2 / 0.01 / 1, zero
        biases and log-std), for acting before the learner's first broadcast."""
        width = sum(self._encoded_width(s) for s in self.obs_leaves)
        weights: dict[str, np.ndarray] = {}
        if self.memory is not None:
            gates = GATES[self.memory] * self.memory_size
            weights["core.weight_ih"] = _orthogonal(gates, width, 1.0, rng)
            weights["core.weight_hh"] = _orthogonal(gates, self.memory_size, 1.0, rng)
            weights["core.bias_ih"] = weights["core.bias_hh"] = np.zeros(gates, np.float32)
            width = self.memory_size
        for key in ("pi", "vf"):
            fan_in = width
            for i, size in enumerate(self.spec.hidden_sizes):
                weights[f"{key}_mlp.{2 * i}.weight"] = _orthogonal(size, fan_in, math.sqrt(2), rng)
                weights[f"{key}_mlp.{2 * i}.bias"] = np.zeros(size, np.float32)
                fan_in = size
            out, gain = (sum(self.head_sizes), 0.01) if key == "pi" else (1, 1.0)
            weights[f"{key}_head.weight"] = _orthogonal(out, fan_in, gain, rng)
            weights[f"{key}_head.bias"] = np.zeros(out, np.float32)
        weights["log_std"] = np.zeros(sum(n for n, s in zip(self.head_sizes, self.act_leaves)
                                          if isinstance(s, spaces.Box)), np.float32)
        return weights

    def load(self, weights: dict[str, np.ndarray]) -> None:
        """The policy and value MLPs side by side (as ``rl/models/module.py`` ``side_by_side``):
        a shared layer as it is, the first separate layer stacked, later ones block-diagonal.
        Stored transposed, for ``x @ W``."""
        missing = [f"{name}.weight" for pair in self._keys() for name in pair
                   if name is not None and f"{name}.weight" not in weights]
        if missing or "log_std" not in weights:
            raise ValueError(f"weights for {self.spec.env_name!r} lack {(missing or ['log_std'])[0]!r}: "
                             "not the default actor-critic's state dict")
        layers, apart = [], False
        for pi, vf in self._keys():
            w, b = np.asarray(weights[f"{pi}.weight"], np.float32), np.asarray(weights[f"{pi}.bias"], np.float32)
            if vf is not None:
                vw, vb = np.asarray(weights[f"{vf}.weight"], np.float32), np.asarray(weights[f"{vf}.bias"], np.float32)
                if apart:
                    fused = np.zeros((w.shape[0] + vw.shape[0], w.shape[1] + vw.shape[1]), np.float32)
                    fused[: w.shape[0], : w.shape[1]], fused[w.shape[0]:, w.shape[1]:] = w, vw
                    w = fused
                else:
                    w = np.concatenate([w, vw])
                b, apart = np.concatenate([b, vb]), True
            layers.append((np.ascontiguousarray(w.T), b))
        self.layers = layers
        self.log_std = np.asarray(weights["log_std"], np.float32).copy()
        if self.memory is not None:
            if "core.weight_ih" not in weights:
                raise ValueError(f"weights for {self.spec.env_name!r} lack 'core.weight_ih': not a {self.memory} policy's")
            w_ih, w_hh = (np.asarray(weights[f"core.weight_{k}"], np.float32) for k in ("ih", "hh"))
            self.core = (np.ascontiguousarray(w_ih.T), np.asarray(weights["core.bias_ih"], np.float32),
                         np.ascontiguousarray(w_hh.T), np.asarray(weights["core.bias_hh"], np.float32))

    # -- acting --------------------------------------------------------------------------
    @staticmethod
    def _encoded_width(space: gym.Space) -> int:
        if isinstance(space, spaces.Discrete):
            return int(space.n)
        if isinstance(space, spaces.MultiDiscrete):
            return int(space.nvec.sum())
        return int(np.prod(space.shape))

    def _features(self, obs: Any) -> np.ndarray:
        if self.skip_mask:
            obs = {key: value for key, value in obs.items() if key != ACTION_MASK}
        leaves = [obs] if isinstance(obs, np.ndarray) else tree.flatten(obs)
        parts = []
        for x, space in zip(leaves, self.obs_leaves):
            x = np.asarray(x)
            if isinstance(space, spaces.Discrete):
                parts.append(np.eye(int(space.n), dtype=np.float32)[x.astype(np.int64) - int(space.start)])
            elif isinstance(space, spaces.MultiDiscrete):
                parts += [np.eye(int(n), dtype=np.float32)[x[..., i].astype(np.int64) - int(space.start[i])]
                          for i, n in enumerate(space.nvec.tolist())]
            else:
                parts.append(x.reshape(x.shape[0], -1).astype(np.float32, copy=False))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, -1)

    def _step_core(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The recurrent core's step, as rl/models/memory.py ``MemoryCore.step``."""
        w_ih, b_ih, w_hh, b_hh = self.core
        H = self.memory_size
        proj = x @ w_ih + b_ih
        if self.memory == "gru":
            hh = state @ w_hh + b_hh
            r = _sigmoid(proj[:, :H] + hh[:, :H])
            z = _sigmoid(proj[:, H : 2 * H] + hh[:, H : 2 * H])
            n = np.tanh(proj[:, 2 * H :] + r * hh[:, 2 * H :])
            h = (1.0 - z) * n + z * state
            return h, h
        h, c = state[:, :H], state[:, H:]
        gates = proj + h @ w_hh + b_hh
        i, f = _sigmoid(gates[:, :H]), _sigmoid(gates[:, H : 2 * H])
        g, o = np.tanh(gates[:, 2 * H : 3 * H]), _sigmoid(gates[:, 3 * H :])
        c = f * c + i * g
        h = o * np.tanh(c)
        return h, np.concatenate([h, c], -1)

    def _forward(self, obs: Any, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(policy head output (B, heads) with illegal logits at the lowest float, values
        (B,), the next recurrent state or None)."""
        out = self._features(obs)
        if self.core is not None:
            out, state = self._step_core(out, np.asarray(state, np.float32))
        for w, b in self.layers[:-1]:
            out = self.act(out @ w + b)
        w, b = self.layers[-1]
        out = out @ w + b
        head = out[:, :-1]
        if isinstance(obs, dict) and ACTION_MASK in obs:
            head = np.where(np.asarray(obs[ACTION_MASK]) != 0, head, _LOWEST)
        return head, out[:, -1], state

    def _leaves(self, head: np.ndarray):
        """(space, head chunk, log-std or None) per action leaf."""
        std_at = 0
        for space, lo, hi in zip(self.act_leaves, self.head_at[:-1], self.head_at[1:]):
            chunk, log_std = head[:, lo:hi], None
            if isinstance(space, spaces.Box):
                log_std = self.log_std[std_at : std_at + hi - lo]
                std_at += hi - lo
            yield space, chunk, log_std

    def explore(self, obs: Any, state: np.ndarray | None = None) -> dict[str, Any]:
        """Sampled actions: {"actions": leaves, "logp": (B,), "values": (B,)}, and with
        memory the next ``state`` (B, S)."""
        head, values, state = self._forward(obs, state)
        actions, logp = [], np.zeros(len(head), np.float32)
        for space, chunk, log_std in self._leaves(head):
            if log_std is None:
                sizes = [int(space.n)] if isinstance(space, spaces.Discrete) else space.nvec.tolist()
                picks = []
                for part in np.split(chunk, np.cumsum(sizes)[:-1], -1):
                    logits = _log_softmax(part)
                    noise = np.maximum(self.rng.standard_exponential(logits.shape, dtype=np.float32), _TINY)
                    pick = np.argmax(logits - np.log(noise), -1)
                    logp += np.take_along_axis(logits, pick[:, None], -1)[:, 0]
                    picks.append(pick)
                actions.append(picks[0] if isinstance(space, spaces.Discrete) else np.stack(picks, -1))
            else:
                noise = self.rng.standard_normal(chunk.shape, dtype=np.float32)
                actions.append(chunk + np.exp(log_std) * noise)
                logp += (-0.5 * noise * noise - log_std - np.float32(0.5 * _LOG_2PI)).sum(-1)
        out = {"actions": actions, "logp": logp, "values": values}
        if state is not None:
            out["state"] = state
        return out

    def values(self, obs: Any, state: np.ndarray | None = None) -> np.ndarray:
        return self._forward(obs, state)[1]

    def greedy(self, obs: Any, state: np.ndarray | None = None) -> Any:
        """The distribution's mode: the legal argmax, the Gaussian's mean; with memory
        (actions, next state)."""
        head, _, state = self._forward(obs, state)
        actions = []
        for space, chunk, log_std in self._leaves(head):
            if log_std is not None:
                actions.append(chunk.copy())
            elif isinstance(space, spaces.Discrete):
                actions.append(np.argmax(chunk, -1))
            else:
                parts = np.split(chunk, np.cumsum(space.nvec.tolist())[:-1], -1)
                actions.append(np.stack([np.argmax(p, -1) for p in parts], -1))
        return actions if state is None else (actions, state)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warning for large |x|


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _orthogonal(rows: int, cols: int, gain: float, rng: np.random.Generator) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal rows or columns, times ``gain``."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    q = q if rows >= cols else q.T
    return (gain * q[:rows, :cols]).astype(np.float32)
