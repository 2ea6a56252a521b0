"""SAC's training step: the shared off-policy loop with SAC's module and learner."""

from __future__ import annotations

from gymnasium import spaces

from rlfleet.algorithms import refusal
from rlfleet.algorithms.sac.config import SACConfig
from rlfleet.algorithms.sac.learner import SACLearner
from rlfleet.algorithms.sac.module import SACModuleSpec
from rlfleet.rl.models.critics import is_bounded_box
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.replay.loop import OffPolicyAlgorithm


class SAC(OffPolicyAlgorithm):
    config: SACConfig
    config_class = SACConfig
    learner_class = SACLearner

    def adapt_module_spec(self, spec: ModuleSpec) -> SACModuleSpec:
        space = spec.action_space
        if not (is_bounded_box(space) or isinstance(space, spaces.Discrete)):
            raise refusal("SAC", spec, "a Discrete or a bounded 1-D Box action space")
        return spec.as_kind(SACModuleSpec, initial_alpha=self.config.initial_alpha)
