"""Replay storage for off-policy learning."""

from rl.replay.buffer import ReplayBuffer
from rl.replay.prioritized import PrioritizedReplayBuffer
from rl.replay.segment_tree import MinTree, SumTree

__all__ = ["MinTree", "PrioritizedReplayBuffer", "ReplayBuffer", "SumTree"]
