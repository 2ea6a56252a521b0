"""Replay of whole sequences for a recurrent Q-learner (R2D2, Kapturowski et al. 2019).

Each fragment is cut into chunks of ``max_seq_len`` steps (rl/batch.py ``to_sequences``),
each with up to ``burn_in`` earlier steps that refresh the state, ``lookahead`` later ones
for n-step targets, and the state the runner acted from at its first step (R2D2's "stored
state"). A sequence is one replay item; every step carries its own next observation
(the final observation where a time limit cut the episode), so a target needs no step
outside its sequence. Sampling is uniform.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tree

from rlfleet.rl.batch import to_sequences
from rlfleet.rl.core import Fragment, SampleBatch

COLUMNS = ("obs", "actions", "rewards", "terminated", "truncated", "is_first", "state_in")


def next_observations(fragment: Fragment) -> Any:
    """The observation after every step of a fragment (T, B, ...): the next step's, the
    bootstrap observation after the last step, the true final one at truncations."""
    batch = fragment.batch
    nxt = tree.map_structure(lambda o, boot: np.concatenate([o[1:], boot]), batch["obs"], batch["bootstrap_obs"])
    for t, b, final in fragment.final_obs:
        tree.map_structure(lambda column, x, t=t, b=b: column.__setitem__((t, b), x), nxt, final)
    return nxt


class SequenceReplay:
    """A ring of ``capacity_steps // max_seq_len`` sequences; its length counts env steps
    (sequences x ``max_seq_len``), as the flat buffer's counts transitions."""

    def __init__(self, capacity_steps: int, *, max_seq_len: int, burn_in: int, lookahead: int, seed: int) -> None:
        self.capacity = max(1, capacity_steps // max_seq_len)
        self.max_seq_len, self.burn_in, self.lookahead = max_seq_len, burn_in, lookahead
        self.data: SampleBatch | None = None  # columns (capacity, W, ...), made at the first add
        self.next = self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size * self.max_seq_len

    def add(self, fragment: Fragment) -> None:
        columns = {key: fragment.batch[key] for key in COLUMNS}
        columns["next_obs"] = next_observations(fragment)
        sequences = to_sequences(columns, max_seq_len=self.max_seq_len, burn_in=self.burn_in,
                                 lookahead=self.lookahead)
        n = len(sequences["loss_mask"])
        if n > self.capacity:  # more than the ring holds: the newest
            sequences = tree.map_structure(lambda x: x[n - self.capacity:], sequences)
            n = self.capacity
        if self.data is None:
            self.data = tree.map_structure(lambda x: np.zeros((self.capacity, *x.shape[1:]), x.dtype), sequences)
        rows = (self.next + np.arange(n)) % self.capacity
        tree.map_structure(lambda store, x: store.__setitem__(rows, x), self.data, sequences)
        self.next = (self.next + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def sample(self, steps: int) -> SampleBatch:
        """Uniformly drawn sequences, ``steps // max_seq_len`` of them (at least one), with
        their ``indices``."""
        rows = self.rng.integers(0, self.size, max(1, steps // self.max_seq_len))
        out = tree.map_structure(lambda x: x[rows], self.data)
        out["indices"] = rows
        return out

    def get_state(self) -> dict[str, Any]:
        return {"data": self.data, "next": self.next, "size": self.size, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("data") is not None:
            shapes = tree.map_structure(lambda x: x.shape[0], state["data"])
            if tree.flatten(shapes)[0] != self.capacity:
                raise ValueError(f"its replay holds {tree.flatten(shapes)[0]} sequences, this run's holds "
                                 f"{self.capacity} (buffer_size // max_seq_len): restore with the same settings")
        self.data, self.next, self.size = state["data"], int(state["next"]), int(state["size"])
        self.rng.bit_generator.state = state["rng"]
