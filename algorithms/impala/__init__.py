"""IMPALA (Espeholt et al. 2018): asynchronous actors, V-trace off-policy correction."""

from rlfleet.algorithms.impala.algorithm import IMPALA, learner_batch
from rlfleet.algorithms.impala.config import IMPALAConfig
from rlfleet.algorithms.impala.learner import IMPALALearner, impala_loss

__all__ = ["IMPALA", "IMPALAConfig", "IMPALALearner", "impala_loss", "learner_batch"]
