"""Learner: owns the module on its device, the optimiser, gradient clipping and the
learning-rate schedule. An algorithm subclasses it and supplies ``compute_loss`` only."""

from __future__ import annotations

import abc
import socket
import warnings
from typing import Any

import numpy as np
import torch
import tree

from rlfleet.rl.batch import SampleBatch, num_rows, take_rows
from rlfleet.rl.module import ModuleSpec, RLModule
from rlfleet.rl.optim import Adam
from rlfleet.runtime import Runtime

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
    def __init__(self, *, module_spec: Any, config: Any) -> None:
        """``module_spec.build()`` makes the module; the optimiser settings (lr,
        lr_schedule, grad_clip, device, seed) come from the algorithm's ``config``."""
        self.config = config
        lr, lr_schedule, grad_clip, seed = config.lr, config.lr_schedule, config.grad_clip, config.seed
        self.device = resolve_device(config.device)
        self.module: RLModule = module_spec.build().to(self.device)
        # eps=1e-5 rather than Adam's 1e-8: the PPO implementation-details study (Huang et
        # al. 2022) and SB3 both use it; it damps steps on near-zero second moments.
        self.optimizer = Adam(self.module.parameters(), lr=lr, eps=1e-5)
        self.lr, self.lr_schedule, self.grad_clip = lr, lr_schedule, grad_clip
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size = 0, 1

    @abc.abstractmethod
    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The algorithm's loss on one minibatch of tensors: (scalar loss, metrics)."""

    def to_tensors(self, batch: SampleBatch) -> TensorBatch:
        # Batches from Ray's object store are read-only numpy views; the loss never writes
        # to its inputs, so sharing their memory is safe.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
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
        out = self.train_epochs(self.to_tensors(batch), num_epochs=num_epochs, minibatch_size=minibatch_size)
        out["learner/lr"] = lr
        return out

    def train_epochs(self, data: TensorBatch, *, num_epochs: int, minibatch_size: int) -> dict[str, float]:
        """Gradient steps over shuffled minibatches of the rows of ``data`` (tensors on
        the device); the metrics averaged over the steps."""
        n = num_rows(data)
        # A batch short of a failed runner's fragment can be smaller than a minibatch:
        # learn from what arrived rather than take no step at all.
        minibatch_size = min(minibatch_size, n)
        keys: list[str] = []
        total: torch.Tensor | float = 0.0  # all metrics stacked in one tensor: one add per step
        steps = 0
        for _ in range(num_epochs):
            perm = torch.from_numpy(self.rng.permutation(n)).to(self.device)
            for start in range(0, n - minibatch_size + 1, minibatch_size):
                metrics = self.gradient_step(take_rows(data, perm[start : start + minibatch_size]))
                keys = list(metrics)
                total = total + torch.stack(list(metrics.values()))
                steps += 1
        out = dict(zip(keys, (total / steps).tolist()))
        out["learner/num_sgd_steps"] = steps
        return out

    def gradient_step(self, minibatch: TensorBatch) -> dict[str, torch.Tensor]:
        """One optimiser step on the loss of ``minibatch``; returns its (detached) metrics."""
        loss, metrics = self.compute_loss(minibatch)  # metrics come detached
        self.optimizer.zero_grad()
        loss.backward()
        metrics["losses/grad_norm"] = self.clip_and_norm()
        self.optimizer.step()
        return metrics

    def clip_and_norm(self) -> torch.Tensor:
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.world_size > 1:
            # Average gradients over learners: each loss is a mean over an equal shard, so
            # the average is the gradient of the mean over the whole minibatch.
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for p in params:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
        grads = [p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # global L2 norm
        if self.grad_clip is not None:
            # Scale by min(1, clip / norm): the same as clip_grad_norm_, without its per-call
            # grouping overhead, which is most of its cost for a small network.
            torch._foreach_mul_(grads, torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0))
        return norm

    # -- data parallelism ------------------------------------------------------------
    def master_address(self) -> tuple[str, int]:
        """Where rank 0 will listen for the process group (called on rank 0)."""
        return _free_address()

    def setup_distributed(self, world_size: int, address: str, port: int, backend: str) -> None:
        torch.distributed.init_process_group(
            backend, init_method=f"tcp://{address}:{port}", rank=self.rank, world_size=world_size
        )
        self.world_size = world_size
        with torch.no_grad():  # start from rank 0's weights everywhere
            for p in self.module.parameters():
                torch.distributed.broadcast(p.data, src=0)

    def update_shard(
        self, batch: SampleBatch, num_epochs: int, minibatch_size: int, env_steps: int
    ) -> dict[str, float]:
        """``update`` with positional arguments, as learner actors are called."""
        return self.update(batch, num_epochs=num_epochs, minibatch_size=minibatch_size, env_steps=env_steps)

    def stop(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

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


class LearnerFactory:
    """Picklable ``factory(rank) -> Learner`` for learner actors."""

    def __init__(self, learner_cls: type[Learner], *, module_spec: ModuleSpec, config: Any) -> None:
        self.learner_cls, self.module_spec, self.config = learner_cls, module_spec, config

    def __call__(self, rank: int) -> Learner:
        torch.set_num_threads(self.config.torch_threads)
        learner = self.learner_cls(module_spec=self.module_spec, config=self.config)
        learner.rank = rank
        learner.rng = np.random.default_rng(self.config.seed + rank)
        return learner


def _free_address() -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return socket.gethostbyname(socket.gethostname()), port


class LearnerGroup:
    """One local learner (``num_learners=0``), or N learner actors doing data-parallel
    updates: the batch is split into N equal shards, each learner computes gradients on
    its shard, ``all_reduce`` averages them, and every learner takes the same step, so
    the weights stay identical on all of them."""

    def __init__(self, runtime: Runtime, factory: LearnerFactory, num_learners: int, *, num_gpus_per_learner: float) -> None:
        self.num_learners = num_learners
        self.learner: Learner | None = factory(0) if num_learners == 0 else None
        self.group = None
        if num_learners > 0:
            self.group = runtime.create_group(
                factory, num_learners, num_cpus=1, num_gpus=num_gpus_per_learner, name="Learner"
            )
            if num_learners > 1:
                address, port = _unwrap_all(self.group.call("master_address", indices=[0]))[0]
                backend = "nccl" if num_gpus_per_learner > 0 else "gloo"
                _unwrap_all(self.group.call("setup_distributed", num_learners, address, port, backend))

    def update(self, batch: SampleBatch, *, num_epochs: int, minibatch_size: int, env_steps: int) -> dict[str, float]:
        if self.learner is not None:
            return self.learner.update(batch, num_epochs=num_epochs, minibatch_size=minibatch_size, env_steps=env_steps)
        n, rows = self.num_learners, num_rows(batch)
        shard = rows // n
        shards = [take_rows(batch, slice(i * shard, (i + 1) * shard)) for i in range(n)]
        results = _unwrap_all(self.group.call_each(
            "update_shard", [(s, num_epochs, minibatch_size // n, env_steps) for s in shards]
        ))
        return {k: float(np.mean([r[k] for r in results])) for k in results[0]}

    def call(self, method: str, *args: Any) -> list[Any]:
        """An algorithm-specific learner method, on every learner; one result each."""
        if self.learner is not None:
            return [getattr(self.learner, method)(*args)]
        return _unwrap_all(self.group.call(method, *args))

    def get_weights(self) -> dict[str, np.ndarray]:
        if self.learner is not None:
            return self.learner.get_weights()
        return _unwrap_all(self.group.call("get_weights", indices=[0]))[0]

    def get_state(self) -> dict[str, Any]:
        if self.learner is not None:
            return self.learner.get_state()
        return _unwrap_all(self.group.call("get_state", indices=[0]))[0]

    def set_state(self, state: dict[str, Any]) -> None:
        if self.learner is not None:
            self.learner.set_state(state)
        else:
            _unwrap_all(self.group.call("set_state", state))

    def stop(self) -> None:
        if self.group is not None:
            self.group.shutdown()


def _unwrap_all(results: list) -> list:
    """A learner failure is fatal: raise the first error, else return the values."""
    for r in results:
        if not r.ok:
            raise RuntimeError(f"learner {r.index} failed: {type(r.error).__name__}: {r.error}") from r.error
    return [r.value for r in results]
