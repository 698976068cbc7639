"""The error of a run that cannot start or continue (configuration errors are TrainConfigError)."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A training run cannot start or continue (data, checkpoint, devices); the message says why."""


class DataError(TrainError):
    """A sample cannot be read or made into targets; the message names its image."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line. An error raised in a DataLoader worker reaches the main process
    re-raised with the worker's traceback in its message: of that, the line that states the original error
    (``<module>.<ErrorName>: message``, written on one line by :class:`DataError`'s maker)."""
    text = str(error).strip()
    if "Original Traceback" in text:
        stated = [line for line in text.splitlines() if line.split(": ", 1)[0].endswith(type(error).__name__)]
        if stated:
            text = stated[-1].split(": ", 1)[1]
    return " ".join(text.split())
