"""IMPALA's training step: take the fragments that have arrived, learn from full batches,
publish new weights every k updates. Runners never wait for the learner."""

from __future__ import annotations

import collections
import time

import numpy as np
import tree

from rlfleet.algorithms.impala.config import IMPALAConfig
from rlfleet.algorithms.impala.learner import IMPALALearner
from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.batch import concat_batches
from rlfleet.rl.core import Fragment, SampleBatch
from rlfleet.rl.runners.env_runner import control_runner_factory
from rlfleet.rl.checkpoint import load_checkpoint

LEARNER_KEYS = ("obs", "actions", "logp", "rewards", "terminated", "truncated", "bootstrap_obs")
MEMORY_KEYS = ("is_first", "state_in")
"""Also sent with a recurrent policy (rl/core.py, "Memory")."""


def learner_keys(batch: SampleBatch) -> tuple[str, ...]:
    return LEARNER_KEYS + (MEMORY_KEYS if "state_in" in batch else ())


def learner_batch(fragments: list[Fragment]) -> SampleBatch:
    """Fragments side by side (T, sum B), with the truncations' final observations gathered
    as (K, ...) at time/env positions ``final_tb`` (K, 2)."""
    parts = []
    for f in fragments:
        finals = [obs for _, _, obs in f.final_obs]
        parts.append({**{k: f.batch[k] for k in learner_keys(f.batch)},
                      "final_tb": np.asarray([(t, b) for t, b, _ in f.final_obs], np.int64).reshape(-1, 2),
                      "final_obs": (tree.map_structure(lambda *xs: np.stack(xs), *finals) if finals
                                    else tree.map_structure(lambda x: x[0, :0], f.batch["bootstrap_obs"]))})
    return join_columns(parts)


def join_columns(parts: list[SampleBatch]) -> SampleBatch:
    """Batches with their truncations' ``final_tb``/``final_obs`` side by side: the env
    positions of each part's truncations move by the columns before it."""
    batch = concat_batches([{k: p[k] for k in learner_keys(parts[0])} for p in parts])
    offsets = np.cumsum([0] + [p["rewards"].shape[1] for p in parts[:-1]])
    batch["final_tb"] = np.concatenate([p["final_tb"] + np.array([0, o], np.int64) for p, o in zip(parts, offsets)])
    batch["final_obs"] = tree.map_structure(lambda *xs: np.concatenate(xs), *[p["final_obs"] for p in parts])
    return batch


class IMPALA(Algorithm):
    config: IMPALAConfig
    config_class = IMPALAConfig
    learner_class = IMPALALearner
    runner_factory_class = control_runner_factory

    def setup(self) -> None:
        self.queue: collections.deque[Fragment] = collections.deque()
        # multi-agent: each policy's batches wait in its own queue (a fragment may hold none)
        self.policy_queues: dict[str, collections.deque[SampleBatch]] = collections.defaultdict(collections.deque)
        self.num_updates = 0
        self.num_dropped_queue_full = 0
        self.num_dropped_stale = 0

    def get_state(self) -> dict:
        state = super().get_state()
        state["impala"] = {"num_updates": self.num_updates, "dropped_queue_full": self.num_dropped_queue_full,
                           "dropped_stale": self.num_dropped_stale}
        return state

    def restore(self, path: str) -> None:
        super().restore(path)
        counters = load_checkpoint(path).get("impala", {})
        self.num_updates = counters.get("num_updates", 0)
        self.num_dropped_queue_full = counters.get("dropped_queue_full", 0)
        self.num_dropped_stale = counters.get("dropped_stale", 0)

    def training_step(self) -> dict[str, float]:
        c = self.config
        t0 = time.perf_counter()
        fragments = self.env_runner_group.sample_async()
        self.record(fragments)
        for frag in fragments:
            if self.weights_version - frag.weights_version > c.max_policy_lag:
                self.num_dropped_stale += 1
                continue
            if len(self.queue) >= c.max_queue_fragments:
                self.queue.popleft()
                self.num_dropped_queue_full += 1
            self.queue.append(frag)
        sums: dict[str, float] = {}
        updates = 0
        for batch in self.learner_batches():
            for k, v in self.learner_group.update(batch, env_steps=self.env_steps).metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            updates += 1
            self.num_updates += 1
            if self.num_updates % c.broadcast_interval == 0:
                self.publish_weights()
        metrics = {k: v / updates for k, v in sums.items()} if updates else {}
        metrics.update({
            "learner/num_grad_steps": sums.get("learner/num_grad_steps", 0),  # the iteration's, over every update
            "learner/updates": updates,
            "learner/updates_total": self.num_updates,
            "learner/updates_per_s": updates / max(time.perf_counter() - t0, 1e-9),
            "num_fragments_dropped_queue_full": self.num_dropped_queue_full,
            "num_fragments_dropped_stale": self.num_dropped_stale,
            "learner_queue_size": len(self.queue),
        })
        return metrics

    def learner_batches(self):  # -> Iterator[SampleBatch | dict[str, SampleBatch]]
        """Full batches from the queue: ``train_batch_fragments`` fragments side by side, or
        with several policies a batch of every policy whose queue holds that many."""
        c = self.config
        if not isinstance(self.module_spec, dict):
            while len(self.queue) >= c.train_batch_fragments:
                yield learner_batch([self.queue.popleft() for _ in range(c.train_batch_fragments)])
            return
        while self.queue:
            for pid, batch in self.queue.popleft().batch.items():
                self.policy_queues[pid].append(batch)
        while True:
            ready = {pid: join_columns([q.popleft() for _ in range(c.train_batch_fragments)])
                     for pid, q in self.policy_queues.items() if len(q) >= c.train_batch_fragments}
            if not ready:
                return
            yield ready
