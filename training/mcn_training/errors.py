"""The error of a run that cannot start or continue (configuration errors are TrainConfigError)."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A training run cannot start or continue (data, checkpoint, devices); the message says why."""
