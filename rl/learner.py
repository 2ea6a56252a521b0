"""Learner and LearnerGroup: the one update entry every algorithm trains through.

A learner owns the module on its device, the optimiser, gradient clipping, the learning-
rate schedule, the epoch/minibatch loop and, with several learners, the all-reduce of
gradients and of the statistics a loss normalises by. An algorithm supplies its loss
(``compute_loss``) and, where needed, ``prepare`` and ``minibatches``. See rl/core.py.
"""

from __future__ import annotations

import abc
import socket
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
import tree

from rlfleet.rl.batch import num_rows, take_rows
from rlfleet.rl.core import DEFAULT_GROUP, SampleBatch, UpdateResult, Weights
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


def normalize(
    x: torch.Tensor, mask: torch.Tensor | None = None, *, unbiased: bool = True,
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x - mean) / (std + 1e-8) over the elements where ``mask`` is 1 (all by default),
    zero where it is 0; ``all_sum`` sums the statistics over learners. Fewer than two
    elements have no spread (the std of one is NaN with Bessel's correction): centred only."""
    if all_sum is None:
        if mask is None:  # torch's own kernels (one learner, as before the learner groups)
            std = x.std(unbiased=unbiased) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)
            return (x - x.mean()) / (std + 1e-8)
        all_sum = lambda t: t  # noqa: E731
    w = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    n = all_sum(w.sum())
    mean = all_sum((x * w).sum()) / n.clamp(min=1.0)
    if float(n) < 2:
        return (x - mean) * w
    var = all_sum(((x - mean).pow(2) * w).sum()) / (n - 1 if unbiased else n)
    return (x - mean) / (var.sqrt() + 1e-8) * w


class Learner(abc.ABC):
    per_row_keys: tuple[str, ...] = ()
    """Outputs of ``compute_loss`` that are per row, not averaged: returned in
    ``UpdateResult.per_row`` (e.g. DQN's ``td_abs`` for priorities)."""
    shard_unit: int = 1
    """Rows that ``prepare`` must see together (GRPO: a group of completions)."""

    def __init__(self, *, module_spec: Any, config: Any, rank: int = 0) -> None:
        """``module_spec.build()`` makes the module; the optimiser settings (lr,
        lr_schedule, grad_clip, weight_decay, device, seed) come from ``config``, resolved:
        a run resolves it once, before any runner or learner reads it (the fields left to
        the spaces filled by the runner factory); a learner built by hand is given
        ``config.with_family_defaults(family)[0]``."""
        unresolved = [key for key in getattr(config, "family_defaults", {}).get("discrete", {})
                      if getattr(config, key, 0) is None]
        if unresolved:
            raise ValueError(f"{type(self).__name__}: config field {unresolved[0]!r} is still left to the spaces; "
                             "resolve the config first (config.with_family_defaults(family))")
        self.config = config
        self.rank, self.world_size = rank, 1
        self.device = resolve_device(config.device)
        self.module: torch.nn.Module = module_spec.build().to(self.device)
        # eps=1e-5 rather than Adam's 1e-8: the PPO implementation-details study (Huang et
        # al. 2022) and SB3 both use it; it damps steps on near-zero second moments.
        # Listed once: module.parameters() walks the module tree, ~70 us a step for a small MLP.
        self.groups = self.parameter_groups()
        self.params = [p for group in self.groups.values() for p in group]
        self.optimizers = {name: Adam(group, lr=config.lr, eps=1e-5, weight_decay=getattr(config, "weight_decay", 0.0))
                           for name, group in self.groups.items()}
        self.lr, self.lr_schedule, self.grad_clip = config.lr, config.lr_schedule, config.grad_clip
        # The same seed on every learner: they draw the same shuffles, so N learners cut
        # the same minibatches as one learner would.
        self.rng = np.random.default_rng(config.seed)

    # -- what an algorithm supplies ----------------------------------------------------
    @abc.abstractmethod
    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor | dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The algorithm's loss on this learner's part of one minibatch: (loss, metrics).
        With several optimiser groups (:meth:`parameter_groups`) the loss is a dict, one
        per group that steps; a group left out takes no step (TD3's delayed actor)."""

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The module's parameters by optimiser, one Adam each (rl/core.py, "Optimiser
        groups"). Default: every parameter in one group, stepped on one loss."""
        return {DEFAULT_GROUP: list(self.module.parameters())}

    def prepare(self, data: TensorBatch) -> TensorBatch:
        """Columns computed once per batch before the gradient steps (GRPO's advantages,
        reference log-probs). With several learners each prepares its own equal share of
        whole ``shard_unit``s and the new columns are gathered, so every learner ends
        with the columns of the whole batch."""
        return data

    def minibatches(self, data: TensorBatch) -> Iterator[TensorBatch]:
        """``num_epochs`` passes over the rows in shuffled minibatches of
        ``minibatch_size``; this learner takes its equal part of each minibatch."""
        n = num_rows(data)
        size = self.config.minibatch_rows(self.config.minibatch_size)  # with memory, whole sequences
        # A batch short of a failed runner's fragment can be smaller than a minibatch:
        # learn from what arrived rather than take no step at all.
        size = min(size, n)
        size -= size % self.world_size  # equal parts: the mean of their losses is the minibatch's
        if size == 0:  # fewer rows than learners: nothing to split
            return
        part = size // self.world_size
        for _ in range(self.config.num_epochs):
            perm = torch.from_numpy(self.rng.permutation(n)).to(self.device)
            for start in range(0, n - size + 1, size):
                yield take_rows(data, perm[start + self.rank * part : start + (self.rank + 1) * part])

    # -- the one entry -------------------------------------------------------------------
    def update(self, batch: SampleBatch, *, env_steps: int) -> UpdateResult:
        """Learn from ``batch``: prepare it, then a gradient step on every minibatch.

        The batch goes to the device once; minibatches are index views of it. Metrics are
        kept as tensors and read once at the end, so a GPU step never waits on a ``.item()``.
        """
        if self.per_row_keys and type(self).minibatches is Learner.minibatches:
            raise TypeError(f"{type(self).__name__}: per-row outputs need minibatches that keep the batch's row order")
        lr = self.current_lr(env_steps)
        for optimizer in self.optimizers.values():
            optimizer.lr = lr
        data = self._prepare(self.to_tensors(batch))
        # All metrics of a step stacked in one tensor, one add per step; a step whose keys
        # differ (a group that did not step) adds to its own sum: {keys: [sum, count]}.
        totals: dict[tuple[str, ...], list] = {}
        per_row: dict[str, list[torch.Tensor]] = {k: [] for k in self.per_row_keys}
        steps = 0
        for minibatch in self.minibatches(data):
            metrics = self.gradient_step(minibatch)
            for key in self.per_row_keys:
                per_row[key].append(metrics.pop(key))
            entry = totals.setdefault(tuple(metrics), [0.0, 0])
            entry[0] = entry[0] + torch.stack(list(metrics.values()))
            entry[1] += 1
            steps += 1
        sums: dict[str, list[float]] = {}
        for keys, (total, count) in totals.items():
            for key, value in zip(keys, total.tolist()):
                acc = sums.setdefault(key, [0.0, 0])
                acc[0] += value
                acc[1] += count
        out = {key: value / count for key, (value, count) in sums.items()}
        out["learner/num_grad_steps"] = steps
        out["learner/lr"] = lr
        # (steps, rows of this learner per step): the group interleaves the learners' rows.
        return UpdateResult(out, {k: torch.stack(v).cpu().numpy() for k, v in per_row.items() if v})

    def _prepare(self, data: TensorBatch) -> TensorBatch:
        n, world = num_rows(data), self.world_size
        if type(self).prepare is Learner.prepare:
            return data
        if world == 1 or n % (world * self.shard_unit):
            return self.prepare(data)
        k = n // world
        own = take_rows(data, slice(self.rank * k, (self.rank + 1) * k))
        prepared = self.prepare(own)
        new = {key: v for key, v in prepared.items() if own.get(key) is not v}
        gathered = {}
        for key, value in new.items():
            parts = [torch.empty_like(value) for _ in range(world)]
            torch.distributed.all_gather(parts, value.contiguous())
            gathered[key] = torch.cat(parts)
        return {**data, **gathered}

    def to_tensors(self, batch: SampleBatch) -> TensorBatch:
        # Batches from Ray's object store are read-only numpy views; the loss never writes
        # to its inputs, so sharing their memory is safe.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return tree.map_structure(lambda x: torch.as_tensor(x, device=self.device), batch)

    def current_lr(self, env_steps: int) -> float:
        return piecewise_linear(self.lr_schedule, env_steps) if self.lr_schedule else self.lr

    def gradient_step(self, minibatch: TensorBatch) -> dict[str, torch.Tensor]:
        """One optimiser step on the loss of ``minibatch``; returns its (detached) metrics."""
        loss, metrics = self.compute_loss(minibatch)  # metrics come detached
        if isinstance(loss, torch.Tensor):
            optimizer = self.optimizers[DEFAULT_GROUP]
            optimizer.zero_grad()
            loss.backward()
            metrics["losses/grad_norm"] = self.clip_and_norm(self.params)
            optimizer.step()
            return metrics
        unknown = sorted(set(loss) - set(self.groups))
        if unknown:
            raise KeyError(f"{type(self).__name__}: loss for unknown optimiser group {unknown[0]!r} "
                           f"(groups: {', '.join(self.groups)})")
        # Each group's loss reaches only its own group's parameters (rl/core.py, "Optimiser
        # groups"), so one backward pass over their sum gives every group its own gradients.
        for optimizer in self.optimizers.values():
            optimizer.zero_grad()
        sum(loss.values()).backward()
        for name in loss:
            metrics[f"losses/grad_norm_{name}"] = self.clip_and_norm(self.groups[name])
            self.optimizers[name].step()
        return metrics

    def clip_and_norm(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """Average ``params``' gradients over the learners, clip them to ``grad_clip`` by
        their global norm, and return that norm (before clipping)."""
        params = [p for p in params if p.grad is not None]
        if self.world_size > 1:
            # Average gradients over learners: each loss is a mean over an equal part (or
            # divides by the all-reduced count), so the average is the whole minibatch's.
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

    # -- statistics over all learners ------------------------------------------------------
    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the learners (itself with one learner)."""
        if self.world_size == 1:
            return x
        x = x.detach().clone()
        torch.distributed.all_reduce(x)
        return x

    def mean_count(self, count: torch.Tensor) -> torch.Tensor:
        """What this learner divides a sum by so that the learners' averaged gradients are
        those of the mean over all of them: the all-reduced count / number of learners."""
        return self.all_sum(count.float()) / self.world_size

    def normalize(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, unbiased: bool = True) -> torch.Tensor:
        """:func:`normalize` with mean and std over every learner's elements."""
        return normalize(x, mask, unbiased=unbiased, all_sum=self.all_sum if self.world_size > 1 else None)

    # -- data parallelism ------------------------------------------------------------
    def master_address(self) -> tuple[str, int]:
        """Where rank 0 will listen for the process group (called on rank 0)."""
        return _free_address()

    def setup_distributed(self, rank: int, world_size: int, address: str, port: int, backend: str) -> None:
        torch.distributed.init_process_group(
            backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size
        )
        self.rank, self.world_size = rank, world_size
        with torch.no_grad():  # start from rank 0's weights everywhere
            for p in self.module.state_dict().values():
                torch.distributed.broadcast(p, src=0)

    def stop(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # -- weights and state -----------------------------------------------------------
    def get_weights(self) -> Weights:
        """CPU numpy copies: numpy arrays are stored once in an object store and read
        zero-copy by every runner."""
        return numpy_weights(self.module)

    def set_weights(self, weights: Weights) -> None:
        with warnings.catch_warnings():  # read-only arrays from the object store; copied in
            warnings.simplefilter("ignore", UserWarning)
            self.module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})

    def get_state(self) -> dict[str, Any]:
        return {
            "module": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        # (checkpoints before optimiser groups hold one optimiser, "optimizer")
        saved = state["optimizers"] if "optimizers" in state else {DEFAULT_GROUP: state["optimizer"]}
        if set(saved) != set(self.optimizers):
            raise ValueError(f"optimiser groups {sorted(saved)} in the state, {sorted(self.optimizers)} in the learner")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved[name])
        self.rng.bit_generator.state = state["rng"]

    # Learner actors are called with positional arguments only.
    def update_positional(self, batch: SampleBatch, env_steps: int) -> UpdateResult:
        return self.update(batch, env_steps=env_steps)


def numpy_weights(module: torch.nn.Module) -> Weights:
    """CPU numpy copies of ``module``'s state dict."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


class LearnerFactory:
    """Picklable ``factory(rank) -> Learner`` for learner actors."""

    def __init__(self, learner_cls: type[Learner], *, module_spec: Any, config: Any) -> None:
        self.learner_cls, self.module_spec, self.config = learner_cls, module_spec, config

    def __call__(self, rank: int) -> Learner:
        torch.set_num_threads(self.config.torch_threads)
        torch.manual_seed(self.config.seed)  # the module's initial weights follow the seed in any process
        return self.learner_cls(module_spec=self.module_spec, config=self.config, rank=rank)


def _free_address() -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return socket.gethostbyname(socket.gethostname()), port


class LearnerGroup:
    """One local learner (``num_learners=0``), or N learner actors doing data-parallel
    updates: the batch is put into the object store once, every learner works on its
    equal part of it (see :meth:`Learner.minibatches`), ``all_reduce`` averages the
    gradients, and every learner takes the same step, so their weights stay identical."""

    def __init__(self, runtime: Runtime, factory: LearnerFactory, num_learners: int, *, num_gpus_per_learner: float) -> None:
        self.runtime = runtime
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
                _unwrap_all(self.group.call_each(
                    "setup_distributed", [(rank, num_learners, address, port, backend) for rank in range(num_learners)]
                ))

    def update(self, batch: SampleBatch, *, env_steps: int) -> UpdateResult:
        if self.learner is not None:
            results = [self.learner.update(batch, env_steps=env_steps)]
        else:
            results = _unwrap_all(self.group.call("update_positional", self.runtime.put(batch), env_steps))
        metrics = {k: float(np.mean([r.metrics[k] for r in results])) for k in results[0].metrics}
        # Learner i holds part i of every step's rows: join the parts step by step.
        per_row = {k: np.concatenate([r.per_row[k] for r in results], axis=1).reshape(-1) for k in results[0].per_row}
        return UpdateResult(metrics, per_row)

    def get_weights(self) -> Weights:
        return self.ask("get_weights")

    def ask(self, method: str) -> Any:
        """Rank 0's answer to ``method()``, for what every learner holds alike."""
        if self.learner is not None:
            return getattr(self.learner, method)()
        return _unwrap_all(self.group.call(method, indices=[0]))[0]

    def set_weights(self, weights: Weights) -> None:
        if self.learner is not None:
            self.learner.set_weights(weights)
        else:
            _unwrap_all(self.group.call("set_weights", self.runtime.put(weights)))

    def get_state(self) -> dict[str, Any]:
        return self.ask("get_state")

    def set_state(self, state: dict[str, Any]) -> None:
        if self.learner is not None:
            self.learner.set_state(state)
        else:
            _unwrap_all(self.group.call("set_state", state))

    def stop(self) -> None:
        if self.group is not None:
            self.group.shutdown()


class MultiLearnerGroup:
    """Several policies (multi-agent): one :class:`LearnerGroup` per policy id, with the
    same interface over ``{policy: ...}`` batches, weights and state. A policy that got no
    rows this iteration, or is not in ``trainable``, takes no step: its learners are never
    asked, so none of them waits in an all-reduce for it."""

    def __init__(self, groups: dict[str, LearnerGroup], trainable: list[str]) -> None:
        self.groups, self.trainable = groups, list(trainable)

    def update(self, batches: dict[str, SampleBatch], *, env_steps: int) -> UpdateResult:
        metrics: dict[str, float] = {}
        for pid in self.trainable:
            if pid in batches and num_rows(batches[pid]) > 0:
                result = self.groups[pid].update(batches[pid], env_steps=env_steps)
                metrics.update({f"policies/{pid}/{k}": v for k, v in result.metrics.items()})
        return UpdateResult(metrics)

    def get_weights(self) -> dict[str, Weights]:
        return {pid: g.get_weights() for pid, g in self.groups.items()}

    def copy_weights(self, copies: dict[str, str]) -> None:
        """``{target: source}``: each target policy takes its source's current weights."""
        for target, source in copies.items():
            self.groups[target].set_weights(self.groups[source].get_weights())

    def set_weights(self, weights: dict[str, Weights]) -> None:
        for pid, w in weights.items():
            self.groups[pid].set_weights(w)

    def get_state(self) -> dict[str, Any]:
        return {"policies": {pid: g.get_state() for pid, g in self.groups.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        for pid, s in state["policies"].items():
            self.groups[pid].set_state(s)

    def stop(self) -> None:
        for g in self.groups.values():
            g.stop()


def _unwrap_all(results: list) -> list:
    """A learner failure is fatal: raise the first error, else return the values."""
    for r in results:
        if not r.ok:
            raise RuntimeError(f"learner {r.index} failed: {type(r.error).__name__}: {r.error}") from r.error
    return [r.value for r in results]
