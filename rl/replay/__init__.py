"""Replay storage for off-policy learning."""

from rlfleet.rl.replay.buffer import ReplayBuffer
from rlfleet.rl.replay.prioritized import PrioritizedReplayBuffer
from rlfleet.rl.replay.segment_tree import MinTree, SumTree

__all__ = ["MinTree", "PrioritizedReplayBuffer", "ReplayBuffer", "SumTree"]
