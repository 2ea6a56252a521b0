"""Learner: owns the module on its device, the optimiser, gradient clipping and the
learning-rate schedule. An algorithm subclasses it and supplies ``compute_loss`` only."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch
import tree

from rl.batch import SampleBatch, num_rows, take_rows
from rl.module import ModuleSpec, RLModule
from rl.optim import Adam

TensorBatch = dict[str, Any]


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def piecewise_linear(schedule: list[tuple[int, float]], t: int) -> float:
    """Value of a piecewise-linear schedule [[t0, v0], [t1, v1], ...] at env step ``t``."""
    if t <= schedule[0][0]:
        return float(schedule[0][1])
    for (t0, v0), (t1, v1) in zip(schedule, schedule[1:]):
        if t < t1:
            return float(v0 + (v1 - v0) * (t - t0) / (t1 - t0))
    return float(schedule[-1][1])


class Learner(abc.ABC):
    def __init__(
        self,
        *,
        module_spec: ModuleSpec,
        lr: float,
        lr_schedule: list[tuple[int, float]] | None = None,
        grad_clip: float | None = None,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.device = resolve_device(device)
        self.module: RLModule = module_spec.build().to(self.device)
        # eps=1e-5 rather than Adam's 1e-8: the PPO implementation-details study (Huang et
        # al. 2022) and SB3 both use it; it damps steps on near-zero second moments.
        self.optimizer = Adam(self.module.parameters(), lr=lr, eps=1e-5)
        self.lr, self.lr_schedule, self.grad_clip = lr, lr_schedule, grad_clip
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The algorithm's loss on one minibatch of tensors: (scalar loss, metrics)."""

    def to_tensors(self, batch: SampleBatch) -> TensorBatch:
        return tree.map_structure(lambda x: torch.as_tensor(x, device=self.device), batch)

    def current_lr(self, env_steps: int) -> float:
        return piecewise_linear(self.lr_schedule, env_steps) if self.lr_schedule else self.lr

    def update(
        self, batch: SampleBatch, *, num_epochs: int, minibatch_size: int, env_steps: int
    ) -> dict[str, float]:
        """``num_epochs`` passes over ``batch`` (rows) in shuffled minibatches.

        The batch goes to the device once; minibatches are index views of it. Metrics are
        kept as tensors and read once at the end, so a GPU step never waits on a ``.item()``.
        """
        lr = self.current_lr(env_steps)
        self.optimizer.lr = lr
        data = self.to_tensors(batch)
        n = num_rows(batch)
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for _ in range(num_epochs):
            perm = torch.from_numpy(self.rng.permutation(n)).to(self.device)
            for start in range(0, n - minibatch_size + 1, minibatch_size):
                mb = take_rows(data, perm[start : start + minibatch_size])
                loss, metrics = self.compute_loss(mb)
                self.optimizer.zero_grad()
                loss.backward()
                metrics["losses/grad_norm"] = self.clip_and_norm()
                self.optimizer.step()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v.detach()
                steps += 1
        out = {k: float(v) / steps for k, v in sums.items()}
        out["learner/lr"] = lr
        out["learner/num_sgd_steps"] = steps
        return out

    def clip_and_norm(self) -> torch.Tensor:
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    # -- weights and state -----------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        """CPU numpy copies: numpy arrays are stored once in an object store and read
        zero-copy by every runner."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.module.state_dict().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})

    def get_state(self) -> dict[str, Any]:
        return {
            "module": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]


class LearnerGroup:
    """One local learner today; N data-parallel learner actors with the fleet."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def update(self, batch: SampleBatch, *, num_epochs: int, minibatch_size: int, env_steps: int) -> dict[str, float]:
        return self.learner.update(batch, num_epochs=num_epochs, minibatch_size=minibatch_size, env_steps=env_steps)

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.learner.get_weights()

    def get_state(self) -> dict[str, Any]:
        return self.learner.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.learner.set_state(state)

    def stop(self) -> None:
        pass
