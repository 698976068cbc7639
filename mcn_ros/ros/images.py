"""sensor_msgs Image / CompressedImage <-> numpy, without cv_bridge and without ROS imports.

The functions take the message fields (or any object that has them), so they are tested without rclpy.
Supported encodings are converted to an HxWx3 uint8 array plus its colour order; anything else is refused
with an :class:`ImageError` that says why. A view of the message buffer is used where the layout allows it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from mcn_ros.model.color_order import grey_as_rgb

#: Largest accepted image, in pixels (a 20000x20000 frame is refused before any allocation).
DEFAULT_MAX_PIXELS = 8192 * 8192


class ImageError(ValueError):
    """A frame that cannot be used; the message says what is wrong with it."""


# encoding -> (channels, dtype, colour order of the 3-channel result, OpenCV conversion to that order or None)
_DIRECT: dict[str, tuple[int, type, str, int | None]] = {
    "rgb8": (3, np.uint8, "rgb", None),
    "bgr8": (3, np.uint8, "bgr", None),
    "rgba8": (4, np.uint8, "rgb", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, np.uint8, "bgr", cv2.COLOR_BGRA2BGR),
    "mono8": (1, np.uint8, "rgb", cv2.COLOR_GRAY2RGB),
    "8UC1": (1, np.uint8, "rgb", cv2.COLOR_GRAY2RGB),
    "8UC3": (3, np.uint8, "bgr", None),
    "rgb16": (3, np.uint16, "rgb", None),
    "bgr16": (3, np.uint16, "bgr", None),
    "rgba16": (4, np.uint16, "rgb", cv2.COLOR_RGBA2RGB),
    "bgra16": (4, np.uint16, "bgr", cv2.COLOR_BGRA2BGR),
    "mono16": (1, np.uint16, "rgb", cv2.COLOR_GRAY2RGB),
    "16UC1": (1, np.uint16, "rgb", cv2.COLOR_GRAY2RGB),
    # Bayer mosaics: OpenCV names the pattern by the second row, hence the apparent swap.
    "bayer_rggb8": (1, np.uint8, "rgb", cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, np.uint8, "rgb", cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, np.uint8, "rgb", cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, np.uint8, "rgb", cv2.COLOR_BayerGB2RGB),
    "bayer_rggb16": (1, np.uint16, "rgb", cv2.COLOR_BayerBG2RGB),
    "bayer_bggr16": (1, np.uint16, "rgb", cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg16": (1, np.uint16, "rgb", cv2.COLOR_BayerGR2RGB),
    "bayer_grbg16": (1, np.uint16, "rgb", cv2.COLOR_BayerGB2RGB),
    # Packed 4:2:2 (2 bytes per pixel).
    "yuv422": (2, np.uint8, "rgb", cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, np.uint8, "rgb", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, np.uint8, "rgb", cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": (2, np.uint8, "rgb", cv2.COLOR_YUV2RGB_YUY2),
}

#: Encodings that :func:`image_to_array` accepts.
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_DIRECT)


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image ({width}x{height})")
    if height * width > max_pixels:
        raise ImageError(f"image of {width}x{height} exceeds max_image_pixels={max_pixels}")


def image_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Convert a ``sensor_msgs/Image`` to (HxWx3 uint8 array, ``"rgb"`` or ``"bgr"``).

    8-bit rgb8/bgr8 frames come back as a view of the message buffer (not copied; nothing writes to it), grey
    ones as a read-only view whose three channels are the one plane. 16-bit frames keep their 8 most
    significant bits. Raises :class:`ImageError` for anything unusable.
    """
    encoding = str(msg.encoding)
    if encoding not in _DIRECT:
        raise ImageError(f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    channels, dtype, order, conversion = _DIRECT[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(height, width, max_pixels)
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageError(f"step {step} is smaller than width x pixel size = {row_bytes} for {encoding}")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size != height * step:
        raise ImageError(
            f"data has {buffer.size} bytes, expected height x step = {height} x {step} = {height * step}"
        )

    # Packed 4:2:2 holds pixels in pairs: an odd width is decoded with its row's padding as the last pair's
    # second pixel, then cut (OpenCV converts whole pairs only).
    extra = 1 if channels == 2 and width % 2 else 0
    if extra and step < row_bytes + channels:
        raise ImageError(
            f"{encoding} has pixels in pairs: an odd width ({width}) needs rows padded to a whole pair "
            f"(step >= {row_bytes + channels}), got step {step}"
        )
    rows = buffer.reshape(height, step)[:, : row_bytes + extra * channels]
    pixels: np.ndarray
    if itemsize == 1:
        columns = width + extra
        pixels = rows.reshape(height, columns, channels) if channels > 1 else rows.reshape(height, columns)
    else:
        big_endian = bool(getattr(msg, "is_bigendian", 0))
        wide = (
            np.ascontiguousarray(rows).view(">u2" if big_endian else "<u2").reshape(height, width, channels)
        )
        pixels = (wide >> 8).astype(np.uint8)
        if channels == 1:
            pixels = pixels[:, :, 0]
    if conversion == cv2.COLOR_GRAY2RGB:  # a view, not three copies of the plane (color_order.grey_as_rgb)
        return grey_as_rgb(pixels), order
    if conversion is not None:
        try:
            pixels = cv2.cvtColor(np.ascontiguousarray(pixels), conversion)
        except cv2.error as error:  # none is expected after the checks above; still one clear reason
            raise ImageError(f"cannot convert {encoding} ({width}x{height}): {error.err}") from error
    return (pixels[:, :width] if extra else pixels), order


def compressed_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to (HxWx3 uint8 BGR array, ``"bgr"``)."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageError("compressed image with no data")
    # The header is enough to know the size: refuse huge frames before decoding them.
    info = compressed_size(data)
    if info is not None:
        _check_size(info[0], info[1], max_pixels)
    # As stored: an EXIF orientation turned coordinates away from the raw topic's and RViz's image.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageError(
            f"cannot decode compressed image (format {msg.format!r}, {data.size} bytes): {_damage(data)}"
        )
    _check_size(image.shape[0], image.shape[1], max_pixels)
    return image, "bgr"


def compressed_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(height, width) of a JPEG or PNG from its header, without decoding it; None for another format, or
    when no start-of-frame comes before the first scan. The JPEG's segments are walked by their lengths,
    however long its metadata (EXIF, ICC profiles): no copy. A PNG whose first chunk is not IHDR raises
    :class:`ImageError`. Used by the node (huge frames refused before decoding) and by the rosbag tools (the
    frame sizes of a compressed bag, checked against its ground truth)."""
    raw = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data.reshape(-1).data
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        if raw[12:16] != b"IHDR":  # the size would be read from garbage
            raise ImageError("corrupt PNG: its first chunk is not the IHDR header")
        return int.from_bytes(raw[20:24], "big"), int.from_bytes(raw[16:20], "big")
    if raw[:2] == b"\xff\xd8":
        at = 2
        while at + 9 < len(raw):
            if raw[at] != 0xFF:
                return None
            marker = raw[at + 1]
            if marker == 0xFF:  # fill byte before a marker
                at += 1
                continue
            if marker == 0xDA:  # start of scan: the frame header would have come before
                return None
            length = int.from_bytes(raw[at + 2 : at + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(raw[at + 5 : at + 7], "big"), int.from_bytes(
                    raw[at + 7 : at + 9], "big"
                )
            at += 2 + length
    return None


def _damage(data: np.ndarray) -> str:
    """Why undecodable data is so, as far as the bytes tell."""
    raw = data.tobytes()
    if raw[:2] == b"\xff\xd8":
        # Entropy-coded data never holds FFD9 (FF bytes are stuffed), so the image's end-of-image marker
        # follows its last start-of-scan unless the data was cut off.
        if raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda"):
            return "truncated JPEG (no end-of-image marker after the last scan)"
        return "corrupt JPEG data"
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return "truncated PNG (no IEND chunk)" if b"IEND" not in raw[-12:] else "corrupt PNG data"
    return "neither JPEG nor PNG, or corrupt"


def class_map_encoding(class_map: np.ndarray) -> str:
    """ROS encoding of a class-id map: mono8 for uint8, mono16 for wider ids."""
    return "mono8" if class_map.dtype == np.uint8 else "mono16"
