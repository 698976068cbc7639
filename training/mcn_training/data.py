"""COCO 2017 files -> training samples for a Multitask-CenterNet (boxes, keypoints, semantic maps).

Reads the standard files from a directory the user names (nothing is downloaded): ``instances_*.json``
(boxes and masks of all classes) and, for a pose model, ``person_keypoints_*.json`` (the same person
annotations with 17 keypoints), merged per annotation id into one pycocotools ``COCO``. The files written by
:mod:`mcn_training.synthetic` have the same layout.

Per image and task, as the :class:`~mcn_ros.model.config.ModelConfig` says:

- detection: the non-crowd boxes of the configured classes (COCO names -> category ids by name);
- pose: keypoints of the person boxes. An image is pose-labelled (``has_pose`` = 1) when the keypoints file
  has at least one annotation for it; otherwise (no keypoints file, or an image without people in it, the
  paper's "66k of 118k images" case) ``has_pose`` = 0 and the pose losses skip the image;
- segmentation: instance masks of the configured classes merged into one class map
  (:func:`mcn_ros.evaluation.semantic_target`: polygons and RLE through pycocotools, crowd = 255 ignore).

Coordinates in the json files are used as continuous pixel coordinates (pixel ``i`` covers ``[i, i+1)``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mcn_ros.evaluation import categories_by_name, load_coco, semantic_target
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.labels import NUM_KEYPOINTS
from mcn_training.errors import DataError
from mcn_training.targets import build_targets
from mcn_training.transforms import AugmentConfig, MultitaskTransform

#: A JPEG marker where entropy-coded data ends: 0xFF, then not a stuffed 0x00, a restart marker or fill.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_cut_short(data: bytes) -> bool:
    """Whether the JPEG ``data`` ends before its end-of-image marker: a file cut short, which cv2.imread
    decodes grey below the cut after a warning on stderr that names no file (cv2.imdecode, in OpenCV 5,
    refuses it without saying why); False for data that is not a JPEG.

    Walks the markers as a decoder does (segments by their length, a scan to the next marker), so bytes
    after the end of the image and the end marker of an EXIF thumbnail inside a segment do not mislead it.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    position, end = 2, len(data)
    while True:
        if position + 2 > end:
            return True
        marker = data[position + 1]
        if data[position] != 0xFF or marker in (0x00, 0xFF):  # bytes before a marker: libjpeg skips them
            found = _MARKER_AFTER_SCAN.search(data, position + 1)
            if found is None:
                return True
            position = found.start()
        elif marker == 0xD9:  # end of image
            return False
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a segment
            position += 2
        elif position + 4 > end:
            return True
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
            if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
                found = _MARKER_AFTER_SCAN.search(data, position)
                if found is None:
                    return True
                position = found.start()


class CocoMultitaskDataset(Dataset[dict[str, Tensor]]):
    """COCO-format samples with the targets of every task the model config has.

    ``ds[i]`` is a dict of fixed-size tensors (``default_collate`` batches them): ``image`` float [3, H, W]
    normalised, ``image_id`` int64, ``letterbox`` float [4] (scale_x, scale_y, pad_x, pad_y; original ->
    input pixels, before a training flip), ``orig_size`` int64 [2] (h, w), plus the keys of
    :func:`mcn_training.targets.build_targets`. ``augment=None`` is evaluation (letterbox only).
    """

    def __init__(
        self,
        image_dir: str | Path,
        instances_json: str | Path,
        keypoints_json: str | Path | None,
        model_config: ModelConfig,
        augment: AugmentConfig | None = None,
        max_objects: int = 128,
        keypoint_min_radius: int = 0,
        radius_rule: str = "corrected",
    ) -> None:
        self.image_dir = Path(image_dir)
        self.config = model_config
        self.max_objects = int(max_objects)
        self.keypoint_min_radius = int(keypoint_min_radius)
        self.radius_rule = radius_rule
        self.instances_json = Path(instances_json)
        self.coco, self.pose_images = load_coco(instances_json, keypoints_json)
        self.has_keypoints_file = keypoints_json is not None
        self.image_ids: list[int] = sorted(int(i) for i in self.coco.imgs)
        by_name = categories_by_name(self.coco)
        self.det_label: dict[int, int] = {}
        if model_config.detection is not None:
            self.det_label = {
                by_name[name]: i for i, name in enumerate(model_config.detection.classes) if name in by_name
            }
        self.person_id = by_name.get("person")
        seg_stride = 1 if model_config.segmentation is None else model_config.segmentation.output_stride
        self.transform = MultitaskTransform(
            model_config.input_size, model_config.mean, model_config.std, augment, seg_stride
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as HxWx3 uint8 RGB; a ValueError when its size is not the one its annotations were made
        on (the json's width and height), where boxes, keypoints and masks would not line up with it, or
        when a JPEG file is cut short."""
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            data = path.read_bytes()
        except OSError as error:
            raise FileNotFoundError(
                f"cannot read image {path} (image id {image_id}): {error.strerror or error}"
            ) from error
        if jpeg_cut_short(data):
            raise ValueError(
                f"image {path} is cut short: its JPEG data ends before the end-of-image marker (image id "
                f"{image_id}; an interrupted copy or download?)"
            )
        # imdecode applies the file's EXIF orientation, as imread does.
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise FileNotFoundError(f"cannot read image {path} (image id {image_id})")
        height, width = image.shape[:2]
        expected = (int(info["height"]), int(info["width"]))
        if (height, width) != expected:
            said = f"{expected[1]}x{expected[0]}"
            raise ValueError(
                f"image {path} is {width}x{height} but {self.instances_json.name} says {said} (image id "
                f"{image_id}): its annotations would not line up with it (a resized file, or an EXIF "
                "orientation the annotation tool did not apply?)"
            )
        return np.ascontiguousarray(image[:, :, ::-1])

    def annotations(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Boxes [N, 4] (xyxy) of the detection classes, their class indices [N], keypoints [N, 17, 3] (zeros
        for non-persons) if the image is pose-labelled and the model has pose, else None, and which boxes are
        crowd regions [N] (bool: ignored by the heatmaps' losses, never objects, their rows never read as
        keypoints; last)."""
        anns = [
            a
            for a in self.coco.imgToAnns.get(image_id, [])
            if a["category_id"] in self.det_label and a["bbox"][2] > 0 and a["bbox"][3] > 0
        ]
        anns.sort(key=lambda a: bool(a.get("iscrowd", 0)))  # stable: the objects in their order, then crowds
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        classes = np.array([self.det_label[a["category_id"]] for a in anns], np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        keypoints = None
        if self.config.pose is not None and image_id in self.pose_images:
            keypoints = np.zeros((len(anns), NUM_KEYPOINTS, 3), np.float32)
            for i, ann in enumerate(anns):
                if ann["category_id"] == self.person_id and "keypoints" in ann:
                    keypoints[i] = np.asarray(ann["keypoints"], np.float32).reshape(NUM_KEYPOINTS, 3)
        return boxes, classes, keypoints, crowd

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """One sample; a :class:`DataError` naming the image when it cannot be made."""
        image_id = self.image_ids[index]
        try:
            return self._sample(image_id)
        # What a bad file or annotation raises. The fields are checked when the dataset is made; KeyError,
        # IndexError, TypeError and ArithmeticError (a number no float or int holds) stand for what no check
        # foresaw, so that the run keeps its checkpoint.
        except (OSError, ValueError, KeyError, IndexError, TypeError, ArithmeticError, cv2.error) as error:
            path = self.image_dir / str(self.coco.imgs[image_id].get("file_name"))
            said = " ".join(f"{type(error).__name__}: {error}".split())  # one line, also through a worker
            raise DataError(f"{self.instances_json.name}, image id {image_id} ({path}): {said}") from error

    def _sample(self, image_id: int) -> dict[str, Tensor]:
        image = self.load_image(image_id)
        boxes, classes, keypoints, crowd = self.annotations(image_id)
        semantic = None
        if self.config.segmentation is not None:
            semantic = semantic_target(self.coco, image_id, self.config.segmentation.classes)
        sample = self.transform(image, boxes, keypoints, semantic)
        targets = build_targets(
            sample.boxes,
            classes,
            sample.keypoints,
            sample.semantic,
            self.config.input_size,
            self.config,
            self.max_objects,
            self.keypoint_min_radius,
            self.radius_rule,
            crowd=crowd,
        )
        item: dict[str, Tensor] = {
            "image": sample.image,
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "letterbox": torch.from_numpy(sample.letterbox.as_array()),
            "orig_size": torch.tensor(image.shape[:2], dtype=torch.int64),
        }
        item.update(targets)
        return item

    def describe(self) -> dict[str, Any]:
        """Counts for logs: images, pose-labelled images, annotations."""
        return {
            "images": len(self.image_ids),
            "pose_images": len(self.pose_images & set(self.image_ids)),
            "annotations": len(self.coco.anns),
        }
