"""Training-test helpers: what a run learned, seen from outside the trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcn_training import train
from mcn_training.checkpoints import parameter_digest

#: The summary keys :func:`fit_recording_parameters` adds.
PARAMS = ("params_start", "params_end")


def fit_recording_parameters() -> Callable[[train.Trainer], dict[str, Any]]:
    """``Trainer.fit`` as it is now, whose summary also holds ``params_start`` and ``params_end``: the
    parameter_digest of the model as fit starts (fresh or resumed) and ends. Parameters only: state_digest
    includes BatchNorm's running statistics, which change on every forward even where a step learns nothing.
    """
    real_fit = train.Trainer.fit

    def recording_fit(self: train.Trainer) -> dict[str, Any]:
        start = parameter_digest(self.model_without_ddp)
        summary = real_fit(self)
        return {**summary, PARAMS[0]: start, PARAMS[1]: parameter_digest(self.model_without_ddp)}

    return recording_fit
