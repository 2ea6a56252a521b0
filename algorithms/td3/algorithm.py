"""TD3's training step: the shared off-policy loop with TD3's module and learner."""

from __future__ import annotations

from rlfleet.algorithms import refusal
from rlfleet.algorithms.td3.config import TD3Config
from rlfleet.algorithms.td3.learner import TD3Learner
from rlfleet.algorithms.td3.module import TD3ModuleSpec
from rlfleet.rl.models.critics import is_bounded_box
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.replay.loop import OffPolicyAlgorithm


class TD3(OffPolicyAlgorithm):
    config: TD3Config
    config_class = TD3Config
    learner_class = TD3Learner

    def adapt_module_spec(self, spec: ModuleSpec) -> TD3ModuleSpec:
        space = spec.action_space
        if not is_bounded_box(space):
            raise refusal("TD3", spec, "a bounded 1-D Box action space")
        return spec.as_kind(TD3ModuleSpec, exploration_noise=self.config.exploration_noise)
