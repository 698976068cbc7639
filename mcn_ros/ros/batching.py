"""Latest-frame slots for several cameras, and the batch the inference thread takes from them.

Each camera has one slot: a newer frame replaces its camera's waiting frame (counted as dropped), so
nothing queues. The inference thread takes a batch: at most one frame per camera; once a first frame is
waiting it waits up to ``batch_timeout_s`` for the other live cameras (those that sent a frame within
``live_s``), and never longer. One camera is the single-camera node's case: its frame is taken at once.

No ROS imports: the policy is tested on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

FrameT = TypeVar("FrameT")


class CameraSlots(Generic[FrameT]):
    """One latest-frame slot per camera under one condition, with per-camera drop counts."""

    def __init__(
        self,
        cameras: Sequence[str],
        live_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names must be distinct and at least one: {list(cameras)}")
        self.cameras = tuple(cameras)
        self.live_s = live_s
        self._clock = clock
        self._waiting: dict[str, FrameT] = {}
        self._last_put: dict[str, float] = {}
        self._last_taken: dict[str, int] = {}  # the take (a count) that last served each camera
        self._takes = 0
        self._dropped = dict.fromkeys(self.cameras, 0)
        self._ready = threading.Condition()

    def put(self, camera: str, frame: FrameT) -> None:
        """Offer ``camera``'s newest frame; replaces (and counts as dropped) its frame still waiting."""
        with self._ready:
            if camera in self._waiting:
                self._dropped[camera] += 1
            self._waiting[camera] = frame
            self._last_put[camera] = self._clock()
            self._ready.notify()

    def dropped(self, camera: str) -> int:
        """Frames of ``camera`` replaced in its slot before inference took them."""
        with self._ready:
            return self._dropped[camera]

    def take_batch(
        self, timeout: float, batch_timeout_s: float = 0.0, max_size: int = 0
    ) -> dict[str, FrameT]:
        """The waiting frames, at most one per camera and ``max_size`` in all (0: no limit).

        Waits up to ``timeout`` seconds for a first frame (an empty dict when none came), then up to
        ``batch_timeout_s`` for every other live camera to have one. With a size limit the cameras served
        least recently go first (never served: first), then those whose frame waited longest, so a limit
        of 1 serves busy cameras in turn. (By frame age alone, a camera whose frame is always replaced
        first in each round of a synchronised rig would be served every time and the others starved.)
        """
        with self._ready:
            if not self._waiting:
                self._ready.wait(timeout)
                if not self._waiting:
                    return {}
            deadline = self._clock() + batch_timeout_s
            while not self._complete(max_size):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            order = sorted(self._waiting, key=lambda c: (self._last_taken.get(c, -1), self._last_put[c]))
            if max_size > 0:
                order = order[:max_size]
            self._takes += 1
            self._last_taken.update(dict.fromkeys(order, self._takes))
            return {camera: self._waiting.pop(camera) for camera in order}

    def _complete(self, max_size: int) -> bool:
        """Every live camera has a frame waiting, or the size limit is reached."""
        if max_size > 0 and len(self._waiting) >= max_size:
            return True
        now = self._clock()
        live = [c for c in self.cameras if now - self._last_put.get(c, -float("inf")) <= self.live_s]
        return all(camera in self._waiting for camera in live)

    def give_up(self, camera: str, frame: FrameT) -> None:
        """Count a frame taken but never processed (the node is deactivating) as dropped."""
        with self._ready:
            self._dropped[camera] += 1

    def clear(self) -> None:
        """Discard the waiting frames (on deactivate): dropped, as they will never be processed."""
        with self._ready:
            for camera in self._waiting:
                self._dropped[camera] += 1
            self._waiting.clear()
