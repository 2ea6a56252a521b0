"""GRPO: generate groups of completions, score them, update with group-relative
advantages and a KL term to the frozen reference, broadcast (the LM training step of
rl/lm/algorithm.py with GRPO's learner). With dynamic sampling (DAPO), groups whose
rewards are all equal are dropped and the fleet samples again until the batch holds as
many groups as one round gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.learner import GRPOLearner
from rlfleet.algorithms.grpo.loss import informative_groups
from rlfleet.rl.batch import concat_batches, take_rows
from rlfleet.rl.lm.algorithm import LMAlgorithm


class GRPO(LMAlgorithm):
    config: GRPOConfig
    config_class = GRPOConfig
    learner_class = GRPOLearner

    def collect_batch(self) -> tuple[dict[str, Any] | None, dict[str, float]]:
        s = self.config.loss_settings(self.text_env.max_new_tokens)
        if not s.dynamic_sampling:
            return super().collect_batch()
        g = self.config.group_size
        kept: list[dict[str, Any]] = []
        target, num_kept, dropped, rounds = None, 0, 0, 0
        while rounds < s.max_sampling_rounds and (target is None or num_kept < target):
            batch, _ = super().collect_batch()
            rounds += 1
            if batch is None:
                continue
            keep = informative_groups(torch.as_tensor(batch["rewards"]), g).numpy()
            target = len(keep) if target is None else target
            rows = np.repeat(keep, g)  # whole groups, in order
            dropped += int((~keep).sum())
            if keep.any():
                kept.append(take_rows(batch, np.flatnonzero(rows)))
                num_kept += int(keep.sum())
        metrics = {"dynamic_sampling/rounds": rounds, "dynamic_sampling/groups_dropped": dropped,
                   "dynamic_sampling/groups_kept": min(num_kept, target or 0)}
        if not kept:
            return None, metrics
        batch = concat_batches(kept, axis=0)
        return take_rows(batch, slice(0, (target or num_kept) * g)), metrics
