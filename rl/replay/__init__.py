"""Replay storage for off-policy learning."""

from rl.replay.buffer import PrioritizedReplayBuffer, ReplayBuffer
from rl.replay.segment_tree import MinTree, SumTree

__all__ = ["MinTree", "PrioritizedReplayBuffer", "ReplayBuffer", "SumTree"]
