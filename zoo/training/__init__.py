"""Training: the :class:`Trainer` behind ``zoo train``, its checkpoints, recipes and DDP setup."""

from zoo.training.distributed import DistContext, setup, teardown
from zoo.training.terms import check_terms, loss_term_problems
from zoo.training.trainer import Interrupted, Trainer, TrainConfig, TrainingError, TrainResult

__all__ = ["DistContext", "Interrupted", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "check_terms",
           "loss_term_problems", "setup", "teardown"]
