"""Replay storage for off-policy learning."""

from rl.replay.segment_tree import MinTree, SumTree

__all__ = ["MinTree", "SumTree"]
