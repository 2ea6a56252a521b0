"""Sample batches: dicts of (nested) numpy arrays, handled with dm-tree.

A fragment from one env runner is time-major, every column shaped (T, B, ...) for T steps
of B envs:

    obs          (T, B, ...) nested like the observation space, after obs connectors
    actions      list of action leaves (T, B, ...) in dm-tree order, unclipped samples
    rewards      (T, B) float32, as the env returned them
    terminated   (T, B) bool, the MDP ended (no bootstrap)
    truncated    (T, B) bool, cut by a time limit (bootstrap from the final observation)
    is_first     (T, B) bool, obs[t] is the first observation of an episode
    bootstrap_obs (1, B, ...) the observation after the fragment's last step
  and from an actor-critic module:
    logp         (T, B) log-probability of the actions under the sampling policy
    values       (T, B) value estimates V(s_t) of the sampling policy
    next_values  (T, B) V(s_{t+1}) of the true next state: on truncation the value of the
                 final observation (bootstrap), on termination 0

obs[t+1] after an episode end is already the next episode's first observation; the true
last observation of a truncated episode is kept in ``Fragment.final_obs``.

Postprocessing adds ``advantages`` and ``value_targets`` (T, B). A learner receives rows:
every column reshaped from (T, B, ...) to (T*B, ...) by :func:`flatten_time`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import tree

from rlfleet.rl.core import SampleBatch

if TYPE_CHECKING:  # the learner's side only: this module stays free of torch
    import torch



def concat_batches(batches: Sequence[SampleBatch], axis: int = 1) -> SampleBatch:
    """Concatenate batches column by column; axis 1 joins fragments side by side (more envs)."""
    if len(batches) == 1:
        return batches[0]
    return tree.map_structure(lambda *cols: np.concatenate(cols, axis=axis), *batches)


def flatten_time(batch: SampleBatch) -> SampleBatch:
    """(T, B, ...) -> (T*B, ...) for every column."""
    return tree.map_structure(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), batch)


def num_rows(batch: SampleBatch) -> int:
    return len(tree.flatten(batch)[0])


def take_rows(batch: SampleBatch, idx: np.ndarray | slice) -> SampleBatch:
    return tree.map_structure(lambda x: x[idx], batch)


def to_sequences(batch: SampleBatch, *, max_seq_len: int, burn_in: int = 0, lookahead: int = 0) -> SampleBatch:
    """A time-major batch (T, B, ...) with ``state_in`` (T, B, S) and ``is_first`` (T, B) ->
    sequences for a recurrent learner (rl/core.py, "Memory").

    Chunk k holds steps [kL, (k+1)L) of one env (L = ``max_seq_len``), preceded by up to
    ``burn_in`` earlier steps of the fragment that only refresh the state, and followed by
    up to ``lookahead`` later ones (n-step targets look past the chunk). Every sequence is
    W = burn_in + L + lookahead long, from its first step left-aligned and padded at the end:

        columns     (N, W, ...)  N = chunks x B, sequence n = chunk n // B of env n % B
        state_in    (N, S)       the state the runner stored at the sequence's first step
        loss_mask   (N, W)       1 on the chunk's own steps, 0 on burn-in, lookahead and padding
        valid       (N, W)       1 on every step of the fragment, 0 on padding

    A chunk that starts mid-episode starts from the stored state of that step, never from
    zeros; ``is_first`` zeroes it where an episode starts inside the sequence.
    """
    T, B = batch["is_first"].shape
    starts = np.arange(0, T, max_seq_len)  # (K,)
    first = np.maximum(starts - burn_in, 0)  # each sequence's first step
    width = burn_in + max_seq_len + lookahead
    t = first[:, None] + np.arange(width)[None, :]  # (K, W) the step at each position
    loss = (t >= starts[:, None]) & (t < np.minimum(starts + max_seq_len, T)[:, None])
    valid = t < T
    t = np.minimum(t, T - 1)  # padding repeats the last step, masked out

    def gather(x: np.ndarray) -> np.ndarray:
        out = np.swapaxes(x[t], 1, 2)  # (K, W, B, ...) -> (K, B, W, ...)
        return out.reshape(len(starts) * B, width, *x.shape[2:])

    columns = {key: value for key, value in batch.items() if key != "state_in"}
    out = tree.map_structure(gather, columns)
    out["state_in"] = batch["state_in"][first].reshape(len(starts) * B, -1)  # (N, S)
    out["loss_mask"] = np.repeat(loss, B, axis=0).astype(np.float32)  # (K, W) -> (N, W), chunk-major
    out["valid"] = np.repeat(valid, B, axis=0)
    return out


def burn_in_end(loss_mask: "torch.Tensor") -> "torch.Tensor":
    """(N, W) bool: each sequence's first loss step, where a burn-in before it ends (no
    gradient flows back past it: ``MemoryCore.forward_sequence``'s ``cut``)."""
    return (loss_mask > 0) & (loss_mask.cumsum(1) == 1)


def step_columns(rows: Sequence[Sequence[Any]]) -> SampleBatch:
    """The columns of a (T, B) grid of recorded steps (objects with ``obs``, ``action``
    leaves, ``reward``, ``terminated``, ``truncated``, ``is_first``), time-major: what the
    runners that record steps one by one (multi-agent, external) build their fragments from."""
    stack = lambda items: tree.map_structure(lambda *xs: np.stack(xs), *items)  # noqa: E731
    column = lambda name, dtype: np.array([[getattr(s, name) for s in row] for row in rows], dtype)  # noqa: E731
    return {
        "obs": stack([stack([s.obs for s in row]) for row in rows]),
        "actions": [np.stack([np.stack([s.action[k] for s in row]) for row in rows])
                    for k in range(len(rows[0][0].action))],
        "rewards": column("reward", np.float32),
        "terminated": column("terminated", bool),
        "truncated": column("truncated", bool),
        "is_first": column("is_first", bool),
    }
