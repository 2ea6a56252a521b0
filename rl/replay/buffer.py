"""Replay buffers for off-policy learning: uniform, n-step, frame-stacked; prioritised
replay builds on it in ``rl.replay.prioritized``.

Storage is one ring per *stream* (one env of one runner: ``stream = runner_index * B + b``)
of ``capacity // num_streams`` slots, in preallocated numpy arrays of each leaf's own dtype
(uint8 frames stay uint8). Slot ``j`` of stream ``s`` is the global slot ``g = s * L + j``
and holds one step: the observation the action was taken in, the action leaves, the
reward, ``terminated``, ``truncated`` and ``is_first``. Keeping streams apart is what makes
the next observation free: it is the observation of the next slot of the same stream, so
no step is stored twice (the one exception, a truncated episode's true last observation,
lives in a small side store).

Each stream also counts the steps it has received; step ``a`` of stream ``s`` lives in
slot ``a % L`` while ``count - L <= a < count``. A slot is *sampleable* (valid) only when
everything its target needs is still in the buffer:

* its n-step window is complete: the steps up to the episode end, or up to ``a + n`` when
  the episode goes on, have been written;
* no ``is_first`` falls inside the window without an episode end before it: that is a
  runner restarted mid-episode, whose next observation is lost, so the slot is never
  sampled;
* with frame stacking, the k-1 frames before it (back to the episode start) have not been
  overwritten by the ring.

Validity is recomputed, vectorised, for the few slots an ``add`` can change (the newest
``T + n`` and the ``k - 1`` oldest of each stream it wrote), so sampling never checks it
row by row.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import tree
from gymnasium import spaces

from rlfleet.rl.core import Fragment
from rlfleet.rl.spaces import leaf_spaces, space_structure

_REQUIRED_COLUMNS = ("obs", "actions", "rewards", "terminated", "truncated", "is_first")


class _Windows(NamedTuple):
    """n-step targets of a set of (stream, step) pairs, one entry per pair."""

    valid: np.ndarray  # (M,) bool: sampleable now
    rewards: np.ndarray  # (M,) float64: sum_{i<=m} gamma^i r_{a+i}
    discounts: np.ndarray  # (M,) float64: 0 on termination, gamma^(m+1) on truncation, else gamma^n
    next_slots: np.ndarray  # (M,) int64: global slot whose (stacked) obs is the next obs
    final_slots: np.ndarray  # (M,) int64: slot whose stored final obs is the next obs, -1 if none


def _action_dtype(space: gym.Space) -> np.dtype:
    # The policy samples Discrete/MultiDiscrete actions as int64 indices from 0 (rl.spaces
    # adds the space's start only at the env boundary), whatever dtype the space declares.
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return np.dtype(np.int64)
    return np.dtype(space.dtype)


class ReplayBuffer:
    """Uniform replay of n-step transitions from several env streams.

    Args:
        capacity: total transitions kept; each of the ``num_streams`` rings gets
            ``capacity // num_streams`` slots.
        observation_space: the single-env observation space (for ``frame_stack > 1`` the
            space of ONE frame, e.g. ``Box(0, 255, (84, 84), uint8)``).
        action_space: the single-env action space.
        num_streams: how many envs feed the buffer in total (runners x envs per runner).
        n_step: length of the return window (Sutton & Barto 2018, ch. 7; Hessel et al.
            2018 use 3 in Rainbow).
        gamma: discount of the n-step return.
        frame_stack: k > 1 stores only the newest frame of each stacked observation and
            rebuilds stacks at sample time (Mnih et al. 2015 keep one frame per step for
            the same reason): about 1/k of the memory of storing stacks.
        seed: seeds the numpy Generator that draws samples.
    """

    def __init__(
        self,
        capacity: int,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        num_streams: int,
        n_step: int = 1,
        gamma: float = 0.99,
        frame_stack: int = 1,
        seed: int = 0,
    ) -> None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        slots = capacity // num_streams
        # One sampleable slot needs its k-1 history frames, itself, and n steps ahead.
        if slots < n_step + frame_stack:
            raise ValueError(
                f"capacity {capacity} // num_streams {num_streams} = {slots} slots per stream; "
                f"need at least n_step + frame_stack = {n_step + frame_stack}"
            )
        obs_leaves = leaf_spaces(observation_space)
        if frame_stack > 1 and (len(obs_leaves) != 1 or not isinstance(obs_leaves[0], spaces.Box)):
            raise ValueError(
                f"frame_stack={frame_stack} needs a single Box observation (one frame), got {observation_space}"
            )
        self.capacity = slots * num_streams
        self.num_streams = num_streams
        self.n_step = n_step
        self.gamma = float(gamma)
        self.frame_stack = frame_stack
        self._slots_per_stream = slots
        self._obs_structure = space_structure(observation_space)
        self._obs_spaces = obs_leaves
        self._action_spaces = leaf_spaces(action_space)
        self._rng = np.random.default_rng(seed)

        n = self.capacity
        self._obs = [np.zeros((n, *s.shape), s.dtype) for s in obs_leaves]
        self._actions = [np.zeros((n, *s.shape), _action_dtype(s)) for s in self._action_spaces]
        self._rewards = np.zeros(n, np.float32)
        self._terminated = np.zeros(n, bool)
        self._truncated = np.zeros(n, bool)
        self._is_first = np.zeros(n, bool)
        # Steps since the episode's first observation, capped at k-1: how far back the
        # stack of this slot reaches before padding with the first frame.
        self._history = np.zeros(n if frame_stack > 1 else 0, np.int32)
        self._valid = np.zeros(n, bool)
        self._num_valid = 0
        self._count = np.zeros(num_streams, np.int64)  # steps received per stream
        # True last observation of a truncated episode, as flat leaves, keyed by global slot;
        # with frame stacking it is the full stack the env gave (rare, so not worth rebuilding).
        self._final_obs: dict[int, list[np.ndarray]] = {}
        self._has_final = np.zeros(n, bool)

    # -- public API ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of transitions that can be sampled now."""
        return self._num_valid

    def memory_bytes(self) -> int:
        """Bytes of the preallocated arrays (the truncation side store is not counted)."""
        return sum(a.nbytes for a in self._arrays())

    def get_state(self) -> dict[str, Any]:
        """Everything a restored buffer needs to sample what this one would (copies):
        ``checkpoint_replay`` puts it into checkpoints."""
        return {"arrays": [a.copy() for a in self._arrays()], "num_valid": self._num_valid,
                "final_obs": {int(k): [x.copy() for x in v] for k, v in self._final_obs.items()},
                "rng": self._rng.bit_generator.state, "scalars": self._scalars()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`get_state` of a buffer built with the same settings (refused otherwise)."""
        ours = self._arrays()
        shapes = [(a.shape, a.dtype) for a in ours]
        theirs = [(np.asarray(a).shape, np.asarray(a).dtype) for a in state["arrays"]]
        if shapes != theirs:
            raise ValueError(f"the saved replay buffer does not fit this one (its arrays {theirs[:2]}..., "
                             f"ours {shapes[:2]}...): another capacity, env or runner count?")
        for mine, saved in zip(ours, state["arrays"]):
            np.copyto(mine, np.asarray(saved))
        self._num_valid = int(state["num_valid"])
        self._final_obs = {int(k): [np.asarray(x) for x in v] for k, v in state["final_obs"].items()}
        self._rng.bit_generator.state = state["rng"]
        self._set_scalars(state["scalars"])

    def _scalars(self) -> dict[str, float]:
        return {}

    def _set_scalars(self, scalars: dict[str, float]) -> None:
        pass

    def add(self, fragment: Fragment) -> None:
        """Append a time-major (T, B) fragment; stream ids are ``runner_index * B + b``.

        The fragment is checked in full before anything is written, so a bad one leaves the
        buffer as it was.
        """
        batch = fragment.batch
        missing = [k for k in _REQUIRED_COLUMNS if k not in batch]
        if missing:
            raise ValueError(f"fragment batch lacks column(s) {missing}; replay needs {list(_REQUIRED_COLUMNS)}")
        rewards = np.asarray(batch["rewards"])
        if rewards.ndim != 2:
            raise ValueError(f"fragment rewards have shape {rewards.shape}, expected time-major (T, B)")
        T, B = rewards.shape
        columns = {k: np.asarray(batch[k]).astype(bool, copy=False) for k in ("terminated", "truncated", "is_first")}
        for key, col in columns.items():
            if col.shape != (T, B):
                raise ValueError(f"fragment column {key!r} has shape {col.shape}, expected (T, B) = {(T, B)}")
        terminated, truncated, is_first = columns["terminated"], columns["truncated"], columns["is_first"]
        streams = fragment.runner_index * B + np.arange(B)
        if streams[-1] >= self.num_streams:
            raise ValueError(
                f"runner {fragment.runner_index} with {B} envs feeds streams up to {streams[-1]}, "
                f"but the buffer was built for num_streams={self.num_streams}"
            )
        fresh = self._count[streams] == 0
        if np.any(fresh & ~is_first[0]):
            raise ValueError(
                f"streams {streams[fresh & ~is_first[0]].tolist()} start without is_first at obs[0]; "
                "the first step a stream sends must be an episode start"
            )
        obs = self._check_obs(batch["obs"], T, B)
        actions = self._check_actions(batch["actions"], T, B)
        finals = self._check_final_obs(fragment.final_obs, terminated, truncated)

        L, k = self._slots_per_stream, self.frame_stack
        c0 = self._count[streams]  # (B,)
        t0 = max(0, T - L)  # a fragment longer than a ring keeps only its newest L steps
        steps = c0[None, :] + np.arange(t0, T)[:, None]  # (T', B)
        slots = streams[None, :] * L + steps % L  # (T', B), distinct since T' <= L

        history = self._history_of(is_first, streams) if k > 1 else None  # (T, B)

        # Overwriting a slot drops the final observation stored for its old step.
        for g in slots[self._has_final[slots]].tolist():
            del self._final_obs[g]
        self._has_final[slots] = False
        for store, col in zip(self._obs, obs):
            store[slots] = col[t0:]
        for store, col in zip(self._actions, actions):
            store[slots] = col[t0:]
        self._rewards[slots] = rewards[t0:]
        self._terminated[slots] = terminated[t0:]
        self._truncated[slots] = truncated[t0:]
        self._is_first[slots] = is_first[t0:]
        if history is not None:
            self._history[slots] = history[t0:]
        for t, b, leaves in finals:
            if t >= t0:
                g = int(slots[t - t0, b])
                self._final_obs[g] = leaves
                self._has_final[g] = True
        self._count[streams] += T
        # The written slots hold new steps now: not sampleable until their windows are
        # checked below (which always covers them).
        written = slots.ravel()
        self._num_valid -= int(self._valid[written].sum())
        self._valid[written] = False
        self._refresh_validity(streams, T)

    def sample(self, batch_size: int) -> dict[str, Any]:
        """Draw ``batch_size`` transitions (with replacement) as rows.

        Returns ``obs`` and ``next_obs`` (N, ...) nested like the observation space (stacked
        (N, k, ...) when frame stacking), ``actions`` (list of (N, ...) leaves), ``rewards``
        (N,) float32 n-step returns, ``discounts`` (N,) float32 (the factor on the value of
        ``next_obs``: 0 after termination), ``indices`` (N,) int64 opaque ids for
        ``update_priorities`` and ``weights`` (N,) float32 importance weights.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._num_valid == 0:
            raise ValueError(
                "cannot sample: no transition is sampleable yet "
                f"(each needs its {self.n_step}-step window written)"
            )
        slots = self._draw(batch_size)  # (N,)
        streams, steps = slots // self._slots_per_stream, self._step_of(slots)
        win = self._windows(streams, steps)
        next_obs = self._gather_obs(win.next_slots)
        truncated_rows = np.flatnonzero(win.final_slots >= 0)
        for row, g in zip(truncated_rows.tolist(), win.final_slots[truncated_rows].tolist()):
            for leaf, final in zip(next_obs, self._final_obs[g]):
                leaf[row] = final
        return {
            "obs": tree.unflatten_as(self._obs_structure, self._gather_obs(slots)),
            "actions": [a[slots] for a in self._actions],
            "rewards": win.rewards.astype(np.float32),
            "discounts": win.discounts.astype(np.float32),
            "next_obs": tree.unflatten_as(self._obs_structure, next_obs),
            # The step is folded into the id so an update for a slot overwritten since the
            # sample (asynchronous adds, as in Ape-X) can be recognised and dropped.
            "indices": steps * self.capacity + slots,
            "weights": self._weights(slots),
        }

    # -- hooks for prioritised replay ------------------------------------------------------

    def _draw(self, batch_size: int) -> np.ndarray:
        """Uniform over valid slots: uniform over written slots, invalid ones redrawn.

        Written slots of stream s are exactly its first min(count_s, L) slots, and only
        about n + k of each ring are invalid (plus restarts), so nearly every draw lands.
        """
        L = self._slots_per_stream
        written = np.minimum(self._count, L)  # (S,)
        ends = np.cumsum(written)
        out = np.empty(batch_size, np.int64)
        todo = np.arange(batch_size)
        for _ in range(8):
            u = self._rng.integers(0, ends[-1], size=todo.size)
            s = np.searchsorted(ends, u, side="right")
            g = s * L + (u - (ends[s] - written[s]))
            ok = self._valid[g]
            out[todo[ok]] = g[ok]
            todo = todo[~ok]
            if todo.size == 0:
                return out
        # Almost nothing valid yet (a tiny or just-started buffer): draw from the list.
        out[todo] = self._rng.choice(np.flatnonzero(self._valid), size=todo.size)
        return out

    def _weights(self, slots: np.ndarray) -> np.ndarray:
        return np.ones(slots.shape, np.float32)

    def _set_valid(self, slots: np.ndarray, valid: np.ndarray) -> None:
        """Record the validity of distinct ``slots`` (all changes of ``_valid`` but the
        clearing of freshly written slots in ``add`` go through here)."""
        self._num_valid += int(valid.sum()) - int(self._valid[slots].sum())
        self._valid[slots] = valid

    def _arrays(self) -> list[np.ndarray]:
        return [*self._obs, *self._actions, self._rewards, self._terminated, self._truncated, self._is_first,
                self._history, self._valid, self._count, self._has_final]

    # -- internals -------------------------------------------------------------------------

    def _step_of(self, slots: np.ndarray) -> np.ndarray:
        """Absolute step number held by each (written) global slot."""
        L = self._slots_per_stream
        count = self._count[slots // L]
        return count - 1 - (count - 1 - slots % L) % L

    def _history_of(self, is_first: np.ndarray, streams: np.ndarray) -> np.ndarray:
        """(T, B) steps since each step's episode start, capped at k-1, carried across fragments."""
        T = is_first.shape[0]
        t = np.arange(T)[:, None]
        last_first = np.maximum.accumulate(np.where(is_first, t, -1), axis=0)  # (T, B)
        L = self._slots_per_stream
        prev = self._history[streams * L + (self._count[streams] - 1) % L]  # (B,) last step sent
        hist = np.where(last_first >= 0, t - last_first, prev[None, :] + 1 + t)
        return np.minimum(hist, self.frame_stack - 1)

    def _refresh_validity(self, streams: np.ndarray, T: int) -> None:
        """Recompute validity of every slot of ``streams`` that the last T steps can change:
        the newest T + n (new slots and those whose window was waiting on them) and, with
        frame stacking, the k-1 oldest (their history frames may just have been overwritten).
        """
        L, n, k = self._slots_per_stream, self.n_step, self.frame_stack
        count = self._count[streams][:, None]  # (B, 1)
        newest = count - 1 - np.arange(min(T + n, L))[None, :]
        oldest = count - L + np.arange(k - 1)[None, :]
        steps = np.concatenate([newest, oldest], axis=1)  # (B, R)
        stream_ids = np.broadcast_to(streams[:, None], steps.shape)
        present = (steps >= 0) & (steps >= count - L)
        steps, stream_ids = steps[present], stream_ids[present]
        slots, first = np.unique(stream_ids * L + steps % L, return_index=True)
        self._set_valid(slots, self._windows(stream_ids[first], steps[first]).valid)

    def _windows(self, streams: np.ndarray, steps: np.ndarray) -> _Windows:
        """n-step targets and validity of steps ``steps`` of ``streams`` (both (M,)).

        With m the first offset in [0, n) where the episode ends (else none):
        R = sum_{i<=m} gamma^i r_{a+i}; terminated -> discount 0; truncated -> gamma^(m+1)
        and the stored final obs; no end -> gamma^n and the obs of step a+n.
        """
        L, n, k, gamma = self._slots_per_stream, self.n_step, self.frame_stack, self.gamma
        count = self._count[streams]
        base = streams * L
        valid = (steps >= 0) & (steps >= count - L) & (steps < count)
        if k > 1:  # the stack's oldest frame must still be in the ring
            valid &= steps - self._history[base + steps % L] >= count - L
        rewards = np.zeros(steps.shape, np.float64)
        discounts = np.zeros(steps.shape, np.float64)
        next_slots = base + steps % L
        final_slots = np.full(steps.shape, -1, np.int64)
        open_ = valid.copy()  # window still running: no episode end seen yet
        for i in range(n):
            slot = base + (steps + i) % L
            if i > 0:
                # Not yet written: pending. is_first without an end before it: a restarted
                # runner, the next observation is lost for good.
                cut = open_ & ((steps + i >= count) | self._is_first[slot])
                valid &= ~cut
                open_ &= ~cut
            rewards += np.where(open_, gamma**i * self._rewards[slot], 0.0)
            term = open_ & self._terminated[slot]
            trunc = open_ & self._truncated[slot] & ~term
            next_slots[term] = slot[term]  # never used: the discount is 0 (no bootstrap)
            discounts[trunc] = gamma ** (i + 1)  # bootstrap on truncation, from the true last obs
            final_slots[trunc] = slot[trunc]
            next_slots[trunc] = slot[trunc]  # placeholder row, replaced by the final obs
            open_ &= ~(term | trunc)
        slot_n = base + (steps + n) % L
        bootstrap_ok = (steps + n < count) & ~self._is_first[slot_n]
        valid &= ~open_ | bootstrap_ok
        discounts[open_] = gamma**n
        next_slots[open_] = slot_n[open_]
        return _Windows(valid, rewards, discounts, next_slots, final_slots)

    def _gather_obs(self, slots: np.ndarray) -> list[np.ndarray]:
        """Observation leaves of ``slots``, stacks rebuilt when frame stacking.

        Position p of a k-stack (newest last) is the frame d = k-1-p steps back, clamped at
        the episode's first frame: gymnasium's FrameStackObservation(padding_type="reset").
        """
        if self.frame_stack == 1:
            return [leaf[slots] for leaf in self._obs]
        L, k = self._slots_per_stream, self.frame_stack
        back = np.minimum(np.arange(k - 1, -1, -1)[None, :], self._history[slots][:, None])  # (N, k)
        j = slots % L
        stack_slots = (slots - j)[:, None] + (j[:, None] - back) % L  # (N, k)
        return [self._obs[0][stack_slots]]  # (N, k, *frame)

    def _check_obs(self, obs: Any, T: int, B: int) -> list[np.ndarray]:
        """Flat observation leaves (T, B, ...); with frame stacking, the newest frame only."""
        leaves = [np.asarray(x) for x in tree.flatten(obs)]
        if len(leaves) != len(self._obs_spaces):
            raise ValueError(f"fragment obs has {len(leaves)} leaves, the observation space {len(self._obs_spaces)}")
        k = self.frame_stack
        out = []
        for i, (leaf, space) in enumerate(zip(leaves, self._obs_spaces)):
            expected = (T, B, k, *space.shape) if k > 1 else (T, B, *space.shape)
            if leaf.shape != expected:
                hint = f" (stacked obs for frame_stack={k})" if k > 1 else ""
                raise ValueError(f"fragment obs leaf {i} has shape {leaf.shape}, expected {expected}{hint}")
            if not np.can_cast(leaf.dtype, space.dtype, "same_kind"):
                raise ValueError(f"fragment obs leaf {i} has dtype {leaf.dtype}, the space stores {space.dtype}")
            out.append(leaf[:, :, -1] if k > 1 else leaf)
        return out

    def _check_actions(self, actions: Any, T: int, B: int) -> list[np.ndarray]:
        leaves = [np.asarray(a) for a in actions]
        if len(leaves) != len(self._action_spaces):
            raise ValueError(f"fragment has {len(leaves)} action leaves, the action space {len(self._action_spaces)}")
        for i, (leaf, space) in enumerate(zip(leaves, self._action_spaces)):
            if leaf.shape != (T, B, *space.shape):
                raise ValueError(f"fragment action leaf {i} has shape {leaf.shape}, expected {(T, B, *space.shape)}")
        return leaves

    def _check_final_obs(
        self, final_obs: list[tuple[int, int, Any]], terminated: np.ndarray, truncated: np.ndarray
    ) -> list[tuple[int, int, list[np.ndarray]]]:
        """Exactly one final observation per truncated, not terminated, step."""
        cut = truncated & ~terminated
        seen = np.zeros_like(cut)
        k = self.frame_stack
        out = []
        for t, b, obs in final_obs:
            if not (0 <= t < cut.shape[0] and 0 <= b < cut.shape[1]) or not cut[t, b]:
                raise ValueError(f"final_obs given for step (t={t}, b={b}), which is not a truncation")
            leaves = [np.array(x, dtype=s.dtype) for x, s in zip(tree.flatten(obs), self._obs_spaces)]
            for leaf, space in zip(leaves, self._obs_spaces):
                expected = (k, *space.shape) if k > 1 else space.shape
                if leaf.shape != expected:
                    raise ValueError(f"final_obs at (t={t}, b={b}) has shape {leaf.shape}, expected {expected}")
            seen[t, b] = True
            out.append((t, b, leaves))
        if np.any(cut & ~seen):
            t, b = np.argwhere(cut & ~seen)[0]
            raise ValueError(
                f"step (t={t}, b={b}) is truncated but fragment.final_obs has no observation for it; "
                "truncation bootstraps from the true last observation"
            )
        return out
