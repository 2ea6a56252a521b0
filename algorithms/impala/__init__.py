"""IMPALA (Espeholt et al. 2018): asynchronous actors, V-trace off-policy correction."""

from algorithms.impala.algorithm import IMPALA, learner_batch
from algorithms.impala.config import IMPALAConfig
from algorithms.impala.learner import IMPALALearner, impala_loss

__all__ = ["IMPALA", "IMPALAConfig", "IMPALALearner", "impala_loss", "learner_batch"]
