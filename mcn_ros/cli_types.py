"""argparse types shared by the command-line tools (rosbag tools, training and evaluation, data generator):
a bad number is refused by the parser, with the option named, before any work starts."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
        return value

    return parse
