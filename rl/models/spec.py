"""ModuleSpec: everything needed to build a policy anywhere, as plain data.

It lives apart from the torch module (rl/models/module.py) so that unpickling one, in an env
runner that acts in numpy (rl/models/numpy_policy.py), loads no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym

from rlfleet.rl.spaces import encoder_space

GATES = {"gru": 3, "lstm": 4}
"""Gate blocks of each recurrent core, in PyTorch's order: GRU (r, z, n), LSTM (i, f, g, o)."""


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """Everything needed to build an RLModule anywhere (it is sent to remote actors)."""

    observation_space: gym.Space
    action_space: gym.Space
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    shared_encoder: bool = False
    env_name: str = "env"
    encode_mask: bool = False
    """Feed the observation's action mask to the encoder too (it always masks the logits)."""
    memory: str | None = None
    """A recurrent core after the encoder: ``gru``, ``lstm`` or None (rl/core.py, "Memory")."""
    memory_size: int = 128
    """Units of the recurrent core."""

    @property
    def state_size(self) -> int:
        """Floats of recurrent state per env: H for a GRU, 2H (h then c) for an LSTM, 0
        without memory (rl/core.py, "Memory")."""
        if self.memory is None:
            return 0
        return self.memory_size * (2 if self.memory == "lstm" else 1)

    @property
    def encoder_space(self) -> gym.Space:
        return encoder_space(self.observation_space, encode_mask=self.encode_mask)

    def as_kind(self, cls: type["ModuleSpec"], **extra: Any) -> "ModuleSpec":
        """This spec's fields in a subclass that builds another module (a Q-network, SAC's
        actor and critics), with the subclass's own fields ``extra``."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **extra)

    def build(self) -> Any:
        """The actor-critic (PPO, IMPALA); other module kinds subclass the spec."""
        from rlfleet.rl.models.module import RLModule

        return RLModule(self)

    def build_acting(self, seed: int) -> Any:
        """What an env runner acts with (numpy in, numpy out): the numpy policy where it
        computes this very module (a subclass builds another module), else the torch
        module behind the same interface (``rl/models/module.py`` ``TorchActing``)."""
        from rlfleet.rl.models.numpy_policy import NumpyPolicy, numpy_covers

        if type(self) is ModuleSpec and numpy_covers(self):
            return NumpyPolicy(self, seed)
        import torch

        from rlfleet.rl.models.module import TorchActing

        torch.manual_seed(seed)
        return TorchActing(self.build())
