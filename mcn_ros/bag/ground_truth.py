"""The ground truth that travels with a bag: ``<bag>/ground_truth.json`` beside ``metadata.yaml``.

``ros2 bag`` reads only ``metadata.yaml`` and the storage files it lists, so the sidecar does not disturb it.
Layout (JSON)::

    {"format": "mcn_ros.ground_truth", "version": 1,
     "camera_topic": "/camera/image_raw",
     "frames": [{"stamp": {"sec": 1700000000, "nanosec": 0}, "image_id": 1, "file_name": "...jpg"}, ...],
     "coco": {"images": [...], "annotations": [...], "categories": [...]},   # exactly the bag's images
     "source": {"images": "...", "instances": "...", "keypoints": "..."}}

``coco`` is one COCO dataset: the instances annotations (boxes, masks, all classes) with the keypoints of the
person annotations merged in by annotation id (COCO ships them as two files; :mod:`mcn_ros.coco`), as the
evaluator expects.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcn_ros.bag import BagError
from mcn_ros.bag.bagio import CameraBag, split_stamp, stamp_text, write_text_atomic

SIDECAR = "ground_truth.json"
FORMAT = "mcn_ros.ground_truth"
VERSION = 1


def subset(dataset: Mapping[str, Any], image_ids: list[int]) -> dict[str, Any]:
    """The images ``image_ids`` (in that order) and their annotations; other keys as they are."""
    by_id = {int(im["id"]): im for im in dataset.get("images", [])}
    keep = set(image_ids)
    out = {k: v for k, v in dataset.items() if k not in ("images", "annotations")}
    out["images"] = [by_id[i] for i in image_ids]
    out["annotations"] = [a for a in dataset.get("annotations", []) if int(a["image_id"]) in keep]
    return out


def checked_dataset(dataset: dict[str, Any], source: str) -> dict[str, Any]:
    """``dataset`` (COCO) checked as training and evaluation read it (:func:`mcn_ros.evaluation.check_images`,
    :func:`~mcn_ros.evaluation.check_annotations`): a :class:`BagError` names the first unusable image entry
    or annotation, before any frame is replayed or scored; polygons of fewer than 3 points, which pycocotools
    cannot draw, are left out with a warning."""
    from mcn_ros.coco import annotations_by_id
    from mcn_ros.evaluation import check_annotations, check_images

    try:
        annotations_by_id(dataset.get("annotations", []), source)  # before pycocotools indexes them by id
        coco = _indexed(dataset)
        check_images(coco, source)
        dropped = check_annotations(coco, source)
    except ValueError as error:
        raise BagError(str(error)) from error
    if dropped:
        warnings.warn(f"{source}: {dropped} polygons of fewer than 3 points left out", stacklevel=2)
    return dict(coco.dataset)


def _indexed(dataset: dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` of a copy of ``dataset``, indexed."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@dataclass
class GroundTruth:
    """A bag's ground truth: the COCO dataset of its images and which header stamp shows which image."""

    dataset: dict[str, Any]
    image_of_stamp: dict[int, int]
    camera_topic: str
    path: Path | None = None
    source: dict[str, Any] | None = None
    _sizes: dict[int, tuple[int, int]] | None = field(default=None, init=False, repr=False, compare=False)

    def coco(self) -> Any:
        """A pycocotools ``COCO`` of the dataset (indexed; built on each call)."""
        return _indexed(self.dataset)

    def image_size(self, image_id: int) -> tuple[int, int]:
        """(height, width) of an image as the annotations state it (KeyError for an unknown id)."""
        if self._sizes is None:  # built once: asked for every frame, several times (COCO val has 5k images)
            self._sizes = {
                int(im["id"]): (int(im["height"]), int(im["width"])) for im in self.dataset["images"]
            }
        return self._sizes[image_id]

    def to_json(self) -> dict[str, Any]:
        names = {int(im["id"]): im.get("file_name", "") for im in self.dataset.get("images", [])}
        frames = []
        for stamp, image_id in sorted(self.image_of_stamp.items()):
            sec, nanosec = split_stamp(stamp)
            frames.append(
                {
                    "stamp": {"sec": sec, "nanosec": nanosec},
                    "image_id": image_id,
                    "file_name": names.get(image_id),
                }
            )
        return {
            "format": FORMAT,
            "version": VERSION,
            "camera_topic": self.camera_topic,
            "frames": frames,
            "coco": self.dataset,
            "source": self.source or {},
        }

    def write(self, bag_dir: str | Path) -> Path:
        path = Path(bag_dir) / SIDECAR
        write_text_atomic(path, json.dumps(self.to_json()))
        return path

    def check_matches(self, camera: CameraBag) -> None:
        """Raise :class:`BagError` unless every camera frame has an image id here and the sizes agree."""
        what = f"ground truth {self.path or SIDECAR} does not match bag {camera.path}"
        unmapped = [f.stamp_ns for f in camera.frames if f.stamp_ns not in self.image_of_stamp]
        if unmapped:
            raise BagError(
                f"{what}: {len(unmapped)} of {len(camera.frames)} frames on {camera.topic} have no image id "
                f"(first stamp {stamp_text(unmapped[0])})"
            )
        stamps = {f.stamp_ns for f in camera.frames}
        extra = [s for s in self.image_of_stamp if s not in stamps]
        if extra:
            raise BagError(
                f"{what}: {len(extra)} stamps in the ground truth have no frame on {camera.topic} "
                f"(first {stamp_text(min(extra))})"
            )
        known = {int(im["id"]) for im in self.dataset.get("images", [])}
        for frame in camera.frames:
            image_id = self.image_of_stamp[frame.stamp_ns]
            if image_id not in known:
                raise BagError(f"{what}: image id {image_id} has no entry in the COCO images")
            if frame.height and (frame.height, frame.width) != self.image_size(image_id):
                h, w = self.image_size(image_id)
                raise BagError(
                    f"{what}: the frame stamped {stamp_text(frame.stamp_ns)} is {frame.width}x{frame.height}"
                    f" but image {image_id} is {w}x{h} in the annotations"
                )


def sidecar_path(bag_or_file: str | Path) -> Path:
    path = Path(bag_or_file)
    return path / SIDECAR if path.is_dir() else path


def read_ground_truth(bag_or_file: str | Path) -> GroundTruth:
    """Read a bag's ``ground_truth.json`` (pass the bag folder or the file)."""
    path = sidecar_path(bag_or_file).resolve()
    if not path.is_file():
        raise BagError(
            f"no ground truth at {path}: bags made with `python -m mcn_ros.bag make` carry one; "
            "pass --ground-truth FILE for others"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BagError(f"ground truth {path} is not readable JSON ({error})") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BagError(f"ground truth {path}: not an {FORMAT} file (its 'format' is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise BagError(
            f"ground truth {path}: unsupported version {data.get('version')!r} (expected {VERSION})"
        )
    try:
        image_of_stamp = {
            int(f["stamp"]["sec"]) * 1_000_000_000 + int(f["stamp"]["nanosec"]): int(f["image_id"])
            for f in data["frames"]
        }
        dataset = data["coco"]
        if not isinstance(dataset.get("images"), list) or not isinstance(dataset.get("categories"), list):
            raise KeyError("coco.images / coco.categories")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BagError(f"ground truth {path}: missing or malformed field ({error})") from error
    dataset = checked_dataset(dataset, f"ground truth {path}")
    if len(image_of_stamp) != len(data["frames"]):
        raise BagError(
            f"ground truth {path}: two frames have the same stamp (each must be a frame of its own)"
        )
    stamps_of: dict[int, list[int]] = {}
    for stamp, image_id in image_of_stamp.items():
        stamps_of.setdefault(image_id, []).append(stamp)
    shared = {i: s for i, s in stamps_of.items() if len(s) > 1}
    if shared:  # the results are kept per image: a second frame of one image would replace the first's
        image_id, stamps = next(iter(shared.items()))
        raise BagError(
            f"ground truth {path}: image {image_id} is the ground truth of {len(stamps)} frames "
            f"({', '.join(stamp_text(s) for s in stamps[:3])}); each frame needs an image id of its own "
            f"(copy the image entry and its annotations under a new id); {len(shared)} such image(s)"
        )
    return GroundTruth(dataset, image_of_stamp, str(data.get("camera_topic", "")), path, data.get("source"))
