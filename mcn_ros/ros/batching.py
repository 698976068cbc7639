"""Latest-frame slots for several cameras, and the batch the inference thread takes from them.

Each camera has one slot: a newer frame replaces its camera's waiting frame (counted as dropped), so
nothing queues. The inference thread takes a batch: at most one frame per camera; once a first frame is
waiting it waits up to ``batch_timeout_s`` for the other live cameras (those that sent a frame within
``live_s``) whose next frame is due by then (by their mean interval between frames: a 2 Hz camera does not
hold up a 30 Hz one) and whose frames will be computed (``waits_for``: a camera nobody listens to costs
nothing), and never longer. One camera is the single-camera node's case: its frame is taken at once.

No ROS imports: the policy is tested on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

FrameT = TypeVar("FrameT")
#: Weight of the newest interval in a camera's running mean of the time between its frames.
INTERVAL_WEIGHT = 0.25


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
        self._interval: dict[str, float] = {}  # each camera's mean time between frames (a running mean)
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
            now = self._clock()
            if camera in self._last_put:
                since = now - self._last_put[camera]
                mean = self._interval.get(camera, since)
                self._interval[camera] = mean + INTERVAL_WEIGHT * (since - mean)
            self._last_put[camera] = now
            self._ready.notify()

    def dropped(self, camera: str) -> int:
        """Frames of ``camera`` replaced in its slot before inference took them."""
        with self._ready:
            return self._dropped[camera]

    def take_batch(
        self,
        timeout: float,
        batch_timeout_s: float = 0.0,
        max_size: int = 0,
        waits_for: Callable[[str], bool] | None = None,
    ) -> dict[str, FrameT]:
        """The waiting frames, at most one per camera and ``max_size`` in all (0: no limit).

        Waits up to ``timeout`` seconds for a first frame (an empty dict when none came), then up to
        ``batch_timeout_s`` for every other live camera whose next frame is due by then, and that
        ``waits_for`` (None: every camera), to have one. With a size limit the cameras served
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
            asked: dict[str, bool] = {}

            def computed(camera: str) -> bool:
                """``waits_for``, asked once per camera and batch (it may call into rcl, under this lock);
                a camera it cannot tell about (a publisher torn down meanwhile) is waited for."""
                if camera not in asked:
                    try:
                        asked[camera] = waits_for is None or bool(waits_for(camera))
                    except Exception:
                        asked[camera] = True
                return asked[camera]

            while not self._complete(max_size, deadline, computed):
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

    def _complete(self, max_size: int, deadline: float, waits_for: Callable[[str], bool]) -> bool:
        """Every camera worth waiting for until ``deadline`` has a frame waiting, or the size limit is
        reached."""
        if max_size > 0 and len(self._waiting) >= max_size:
            return True
        now = self._clock()
        for camera in self.cameras:
            if camera in self._waiting:
                continue
            last = self._last_put.get(camera)
            if last is None or now - last > self.live_s:
                continue  # not live
            if last + self._interval.get(camera, 0.0) > deadline:
                continue  # its next frame is not due before the batch goes
            if waits_for(camera):
                return False
        return True

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
