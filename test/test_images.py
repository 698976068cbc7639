"""Image message <-> numpy conversion (no ROS needed: the converters read the message fields)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from bagtools import with_exif_orientation

from mcn_ros.ros.images import ImageError, compressed_size, compressed_to_array, image_to_array


def msg(pixels: np.ndarray, encoding: str, step: int | None = None, bigendian: int = 0) -> SimpleNamespace:
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1).view(np.uint8)
    step = row.shape[1] if step is None else step
    padded = np.zeros((height, step), np.uint8)
    padded[:, : row.shape[1]] = row
    return SimpleNamespace(
        encoding=encoding,
        height=height,
        width=width,
        step=step,
        is_bigendian=bigendian,
        data=padded.tobytes(),
    )


RGB = np.random.default_rng(0).integers(0, 256, size=(6, 10, 3), dtype=np.uint8)


def test_rgb8_is_a_view_of_the_message_buffer() -> None:
    message = msg(RGB, "rgb8")
    pixels, order = image_to_array(message)
    assert order == "rgb" and np.array_equal(pixels, RGB)
    assert np.shares_memory(pixels, np.frombuffer(message.data, np.uint8))


def test_row_padding_bgr_alpha_and_mono() -> None:
    pixels, order = image_to_array(msg(RGB[:, :, ::-1].copy(), "bgr8", step=40))
    assert order == "bgr" and np.array_equal(pixels, RGB[:, :, ::-1])
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])
    assert np.array_equal(image_to_array(msg(rgba, "rgba8"))[0], RGB)
    gray = RGB[:, :, 0].copy()
    pixels, order = image_to_array(msg(gray, "mono8"))
    assert pixels.shape == (6, 10, 3) and np.array_equal(pixels[:, :, 1], gray)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1"])
def test_grey_is_its_plane_seen_as_three_channels(encoding: str) -> None:
    """A grey frame comes back as RGB without three copies of its plane: every channel is the plane, one
    memory (channel stride 0; for 8 bits the message buffer itself, padded rows included), read-only."""
    gray = RGB[:, :, 0].copy()
    wide = "16" in encoding
    source = gray.astype(np.uint16) * 256 + 77 if wide else gray
    message = msg(source, encoding, step=24 if wide else 13)
    pixels, order = image_to_array(message)
    assert order == "rgb" and pixels.shape == (6, 10, 3) and pixels.strides[2] == 0
    assert all(np.array_equal(pixels[:, :, c], gray) for c in range(3))
    assert not pixels.flags.writeable
    assert np.shares_memory(pixels, np.frombuffer(message.data, np.uint8)) != wide


@pytest.mark.parametrize("bigendian", [0, 1])
def test_16_bit_keeps_the_high_byte(bigendian: int) -> None:
    wide = RGB.astype(np.uint16) * 256 + 77
    wide = wide.astype(">u2" if bigendian else "<u2")
    pixels, _ = image_to_array(msg(wide, "rgb16", bigendian=bigendian))
    assert np.array_equal(pixels, RGB)


def test_bayer_is_demosaiced() -> None:
    flat = np.full((8, 8, 3), (200, 100, 50), np.uint8)  # uniform RGB colour
    mosaic = np.zeros((8, 8), np.uint8)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = 200, 100  # R G
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = 100, 50  # G B
    pixels, order = image_to_array(msg(mosaic, "bayer_rggb8"))
    assert order == "rgb"
    assert np.abs(pixels[2:-2, 2:-2].astype(int) - flat[2:-2, 2:-2]).max() <= 2


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"encoding": "32FC1"}, "unsupported encoding"),
        ({"height": 0}, "empty image"),
        ({"step": 5}, "smaller than width"),
        ({"data": b"\x00" * 7}, "expected height x step"),
        ({"height": 20000, "width": 20000, "step": 60000}, "exceeds max_image_pixels"),
    ],
)
def test_bad_frames_are_refused_with_the_reason(change: dict[str, object], text: str) -> None:
    message = msg(RGB, "rgb8")
    for key, value in change.items():
        setattr(message, key, value)
    with pytest.raises(ImageError, match=text):
        image_to_array(message)


def test_compressed_png_jpeg_and_garbage() -> None:
    png = SimpleNamespace(format="png", data=cv2.imencode(".png", RGB)[1].tobytes())
    pixels, order = compressed_to_array(png)
    assert order == "bgr" and np.array_equal(pixels, RGB)
    jpeg = SimpleNamespace(format="jpeg", data=cv2.imencode(".jpg", RGB)[1].tobytes())
    assert compressed_to_array(jpeg)[0].shape == RGB.shape
    with pytest.raises(ImageError, match="exceeds"):
        compressed_to_array(png, max_pixels=59)  # refused from the header, before decoding
    with pytest.raises(ImageError, match="cannot decode"):
        compressed_to_array(SimpleNamespace(format="jpeg", data=b"\xff\xd8garbage" * 5))
    with pytest.raises(ImageError, match="no data"):
        compressed_to_array(SimpleNamespace(format="jpeg", data=b""))


def test_compressed_frames_keep_their_stored_orientation() -> None:
    """An EXIF orientation is not applied: the node's coordinates are those of the image as stored, as in the
    raw topic, compressed_image_transport's decoding and RViz."""
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :20] = 255  # a bright left edge
    jpeg = cv2.imencode(".jpg", wide)[1].tobytes()
    rotated = SimpleNamespace(format="jpeg", data=with_exif_orientation(jpeg, 6))  # "rotate 90 clockwise"
    assert cv2.imdecode(np.frombuffer(rotated.data, np.uint8), cv2.IMREAD_COLOR).shape == (80, 40, 3)
    pixels, _ = compressed_to_array(rotated)
    assert pixels.shape == (40, 80, 3)
    assert pixels[:, :20].mean() > 200 and pixels[:, 30:].mean() < 50


def test_damaged_compressed_frames_say_what_is_wrong() -> None:
    image = np.zeros((60, 80, 3), np.uint8)
    cv2.circle(image, (40, 30), 20, (0, 200, 100), -1)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    png = cv2.imencode(".png", image)[1].tobytes()

    def refusal(data: bytes, fmt: str) -> str:
        with pytest.raises(ImageError) as error:
            compressed_to_array(SimpleNamespace(format=fmt, data=data))
        return str(error.value)

    assert "truncated JPEG" in refusal(jpeg[: len(jpeg) // 2], "jpeg")
    assert "corrupt JPEG" in refusal(jpeg[:2] + bytes(300) + jpeg[302:], "jpeg")  # headers overwritten
    assert "truncated PNG" in refusal(png[: len(png) - 20], "png")
    assert "corrupt PNG" in refusal(png[:12] + b"XXXX" + png[16:], "png")  # no IHDR: no size to trust
    announcing = bytearray(jpeg)
    at = announcing.find(b"\xff\xc0")
    announcing[at + 5 : at + 9] = (60000).to_bytes(2, "big") * 2
    assert "60000x60000 exceeds max_image_pixels" in refusal(bytes(announcing), "jpeg")


@pytest.mark.parametrize(("encoding", "to_yuv"), [("yuv422", "uyvy"), ("yuyv", "yuyv")])
def test_packed_yuv_with_an_odd_width(encoding: str, to_yuv: str) -> None:
    """4:2:2 pixels come in pairs: an odd width decodes when the rows are padded to a whole pair (it was a
    raw OpenCV assertion), and is refused with the reason when they are not."""
    rgb = np.random.default_rng(1).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)  # packed by hand: U Y0 V Y1 (uyvy) or Y0 U Y1 V (yuyv)
    y, u, v = yuv[..., 0], yuv[:, 0::2, 1], yuv[:, 0::2, 2]
    pairs = np.stack(
        (u, y[:, 0::2], v, y[:, 1::2]) if to_yuv == "uyvy" else (y[:, 0::2], u, y[:, 1::2], v), -1
    )
    packed = pairs.reshape(4, 12)
    whole, _ = image_to_array(msg(packed.reshape(4, 6, 2), encoding))
    # Width 5 in rows of 12 bytes: the padding holds the last pair's remaining byte (its V, or Y1).
    padded = SimpleNamespace(
        encoding=encoding, height=4, width=5, step=12, is_bigendian=0, data=packed.tobytes()
    )
    odd_padded, order = image_to_array(padded)
    assert order == "rgb" and odd_padded.shape == (4, 5, 3)
    assert np.array_equal(odd_padded, whole[:, :5])  # the same pixels as the even-width frame's
    with pytest.raises(ImageError, match="odd width"):
        image_to_array(msg(packed[:, :10].reshape(4, 5, 2), encoding))


def test_the_jpeg_size_is_read_past_long_metadata() -> None:
    """The start-of-frame after 64 KiB of APP segments (ICC, EXIF): still read before decoding."""
    ok, jpeg = cv2.imencode(".jpg", np.zeros((300, 400, 3), np.uint8))
    assert ok
    app15 = b"\xff\xef" + (65535).to_bytes(2, "big") + bytes(65533)
    data = jpeg.tobytes()[:2] + app15 + jpeg.tobytes()[2:]
    message = SimpleNamespace(format="jpeg", data=data)
    assert compressed_to_array(message)[0].shape == (300, 400, 3)
    with pytest.raises(ImageError, match="exceeds max_image_pixels=1000"):
        compressed_to_array(message, max_pixels=1000)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded before the size was checked")

    original = cv2.imdecode
    cv2.imdecode = no_decoding  # type: ignore[assignment]
    try:
        with pytest.raises(ImageError, match="exceeds"):
            compressed_to_array(message, max_pixels=1000)
    finally:
        cv2.imdecode = original


def test_the_size_of_a_compressed_frame_is_read_from_its_header() -> None:
    """Public for the rosbag tools (a compressed bag's frame sizes are checked against its ground truth):
    bytes, a memoryview or a uint8 array; None for a format it cannot read."""
    for ext in (".jpg", ".png"):
        encoded = cv2.imencode(ext, RGB)[1]
        for data in (encoded, encoded.tobytes(), memoryview(encoded.tobytes())):
            assert compressed_size(data) == (6, 10), (ext, type(data))
    assert compressed_size(cv2.imencode(".bmp", RGB)[1].tobytes()) is None
    assert compressed_size(b"\xff\xd8garbage" * 5) is None
    with pytest.raises(ImageError, match="IHDR"):
        compressed_size(b"\x89PNG\r\n\x1a\n" + bytes(8) + b"XXXX" + bytes(8))
