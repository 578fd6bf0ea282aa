"""The trainer's exception type, in its own module so the trainer's helpers can raise it too."""

from zoo.errors import ZooError


class TrainingError(ZooError):
    """Training cannot go on (a NaN loss, a malformed loss term, a checkpoint that does not fit)."""
