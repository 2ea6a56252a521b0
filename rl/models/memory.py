"""Memory cores: a GRU or an LSTM after the encoder (issue 33; rl/core.py, "Memory").

The state of a batch of envs is one float32 array (B, S): the GRU's h (S = H), or the
LSTM's h and c side by side (S = 2H). One flat array travels as it is through fragments,
checkpoints of nothing (a restarted runner starts its episodes fresh), and serving's
opaque state. The gate maths is written out (PyTorch's GRUCell / LSTMCell equations, the
same parameter layout) so that the numpy acting forward (rl/models/numpy_policy.py) and
this one are the same computation, and so that a sequence projects all its inputs in one
matrix product before stepping the recurrence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlfleet.rl.core import MEMORY
from rlfleet.rl.models.spec import GATES


def attach_core(module: nn.Module, spec: Any, in_dim: int) -> int:
    """Give ``module`` the spec's core over ``in_dim`` encoder features (``module.core``,
    None without memory), its ``state_size`` and the MEMORY capability; returns the width
    of what the layers after it read."""
    module.core = MemoryCore(spec.memory, in_dim, spec.memory_size) if spec.memory else None
    module.state_size = spec.state_size
    if module.core is None:
        return in_dim
    module.capabilities = module.capabilities | {MEMORY}
    return spec.memory_size


class MemoryCore(nn.Module):
    """``kind`` (gru or lstm) over ``in_dim`` features with ``size`` units; parameters named
    and laid out as PyTorch's cells (weight_ih (G*H, F), weight_hh (G*H, H), biases)."""

    def __init__(self, kind: str, in_dim: int, size: int) -> None:
        super().__init__()
        self.kind, self.size = kind, size
        gates = GATES[kind] * size
        # Orthogonal weights and zero biases, as CleanRL's recurrent PPO agents start.
        self.weight_ih = nn.Parameter(nn.init.orthogonal_(torch.empty(gates, in_dim)))
        self.weight_hh = nn.Parameter(nn.init.orthogonal_(torch.empty(gates, size)))
        self.bias_ih = nn.Parameter(torch.zeros(gates))
        self.bias_hh = nn.Parameter(torch.zeros(gates))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input half of every gate, for any leading axes: (..., F) -> (..., G*H)."""
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def step(self, x_proj: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from projected inputs (B, G*H) and the state (B, S): (output (B, H), state)."""
        H = self.size
        if self.kind == "gru":
            hh = nn.functional.linear(state, self.weight_hh, self.bias_hh)
            r = torch.sigmoid(x_proj[:, :H] + hh[:, :H])
            z = torch.sigmoid(x_proj[:, H : 2 * H] + hh[:, H : 2 * H])
            n = torch.tanh(x_proj[:, 2 * H :] + r * hh[:, 2 * H :])
            h = (1.0 - z) * n + z * state
            return h, h
        h, c = state[:, :H], state[:, H:]
        gates = x_proj + nn.functional.linear(h, self.weight_hh, self.bias_hh)
        i, f = torch.sigmoid(gates[:, :H]), torch.sigmoid(gates[:, H : 2 * H])
        g, o = torch.tanh(gates[:, 2 * H : 3 * H]), torch.sigmoid(gates[:, 3 * H :])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, torch.cat([h, c], -1)

    def forward_step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Acting: features (B, F) and state (B, S) -> (output (B, H), next state (B, S))."""
        return self.step(self.project(x), state)

    def forward_sequence(self, x: torch.Tensor, state: torch.Tensor, is_first: torch.Tensor, *,
                         stored: torch.Tensor | None = None, restart_every: int | None = None,
                         cut: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: features (N, L, F) of N sequences, each from its stored start state
        (N, S), the state zeroed wherever ``is_first`` (N, L) starts an episode inside the
        sequence. With ``stored`` (N, L, S) and ``restart_every`` k, steps 0, k, 2k, ...
        restart from the state stored there instead (chunks of k steps inside one time-major
        pass, as IMPALA's learner runs whole fragments). ``cut`` (N, L) marks where no
        gradient flows back past (the end of a burn-in, which only refreshes the stored
        state: R2D2, Kapturowski et al. 2019). Returns the outputs (N, L, H) and the state
        after each step (N, L, S), step for step what acting computed."""
        proj = self.project(x)  # (N, L, G*H)
        keep = (~is_first.bool()).to(x.dtype).unsqueeze(-1)  # (N, L, 1)
        outs, states = [], []
        for t in range(x.shape[1]):
            if restart_every and t % restart_every == 0:
                state = stored[:, t]
            if cut is not None and t > 0:
                state = torch.where(cut[:, t, None], state.detach(), state)
            out, state = self.step(proj[:, t], state * keep[:, t])
            outs.append(out)
            states.append(state)
        return torch.stack(outs, 1), torch.stack(states, 1)
