"""Reading and writing rosbag2 folders (mcap or sqlite3) with ``rosbags``, and the few CDR facts we rely on.

- :func:`read_camera_bag` loads every frame of a camera topic into memory (serialized, ready to publish), and
  refuses, with one message naming the problem, a missing bag, a truncated or corrupt one, a bag without
  the camera topic or with a topic of another type, and frames with duplicate header stamps. Connections of
  another type on the camera topic (a second publisher of, say, std_msgs/String) are left out with one
  warning, whether the topic was named or found.
- :class:`OutputBagWriter` writes serialized messages under their message types with the standard
  definitions and RIHS01 hashes (:mod:`mcn_ros.bag.typestore`), so ``ros2 bag info`` / ``play`` read them.
- :func:`read_output_bag` reads the node's outputs back, deserialized and keyed by header stamp.
- :func:`staged_output`: every command writes into a temporary sibling and renames at the end, so a
  half-finished run never replaces what an earlier one wrote.

Every message the node publishes, and every camera message, starts with a ``std_msgs/Header``: in CDR that is
the 4-byte encapsulation header, then ``int32 sec``, ``uint32 nanosec``, ``string frame_id``.
:func:`header_stamp_ns` and :func:`with_stamp` read and patch the stamp without deserializing the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcn_ros.bag import BagError
from mcn_ros.bag.typestore import CAMERA_TYPES, COMPRESSED_IMAGE, typestore

STORAGES = ("mcap", "sqlite3")


# -- CDR header --------------------------------------------------------------------------------------------
def _endian(cdr: bytes | memoryview) -> str:
    if len(cdr) < 16:
        raise ValueError(f"serialized message of {len(cdr)} bytes is too short to hold a header")
    return "<" if cdr[1] & 1 else ">"  # encapsulation kinds CDR_LE = 0x0001, CDR_BE = 0x0000


def header_stamp_ns(cdr: bytes | memoryview) -> int:
    """``header.stamp`` in nanoseconds of a serialized message whose first field is a ``std_msgs/Header``."""
    sec, nanosec = struct.unpack_from(_endian(cdr) + "iI", cdr, 4)
    return int(sec) * 1_000_000_000 + int(nanosec)


def with_stamp(cdr: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of a serialized header-first message with ``header.stamp`` replaced."""
    out = bytearray(cdr)
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    struct.pack_into(_endian(cdr) + "iI", out, 4, sec, nanosec)
    return bytes(out)


def sequence_length_after_header(cdr: bytes | memoryview) -> int:
    """Length of the sequence that follows the header (``detections`` of a Detection2DArray, ``poses``)."""
    endian = _endian(cdr)
    (name_length,) = struct.unpack_from(endian + "I", cdr, 12)
    at = 16 + name_length
    at += -(at - 4) % 4  # CDR aligns relative to the end of the encapsulation header
    (count,) = struct.unpack_from(endian + "I", cdr, at)
    return int(count)


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) as in ``builtin_interfaces/Time``."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return int(sec), int(nanosec)


def stamp_text(stamp_ns: int) -> str:
    """A header stamp as messages name it, ``sec.nanosec`` (nine digits)."""
    sec, nanosec = split_stamp(stamp_ns)
    return f"{sec}.{nanosec:09d}"


# -- reading -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """A ``rosbags`` Reader of a rosbag2 folder; any failure to open it becomes one :class:`BagError`."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if not path.is_dir() or not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a rosbag2 folder (a folder with metadata.yaml and its storage files)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as error:
        raise BagError(f"cannot open bag {path}: truncated or corrupt? ({_reason(error)})") from error
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _topics_listing(reader: Any) -> str:
    found = sorted({(c.topic, c.msgtype) for c in reader.connections})
    return ", ".join(f"{topic} [{msgtype}]" for topic, msgtype in found) or "none"


@dataclass
class CameraFrame:
    """One camera message: its header stamp, its time in the bag, its serialized bytes, its size."""

    stamp_ns: int
    log_time_ns: int
    data: bytes
    height: int = 0  # 0: unknown (a CompressedImage neither JPEG nor PNG, or without a readable header)
    width: int = 0


@dataclass
class CameraBag:
    """Every frame of a bag's camera topic, in bag order."""

    path: Path
    topic: str
    msgtype: str
    storage: str
    frame_id: str
    frames: list[CameraFrame] = field(default_factory=list)

    @property
    def compressed(self) -> bool:
        return self.msgtype == COMPRESSED_IMAGE

    @property
    def rate_hz(self) -> float | None:
        """Median frame rate of the recording (from the bag's message times)."""
        times = np.array([f.log_time_ns for f in self.frames], np.float64)
        gaps = np.diff(times)
        gaps = gaps[gaps > 0]
        return float(1e9 / np.median(gaps)) if gaps.size else None

    def pixels(self, frame: CameraFrame) -> tuple[np.ndarray, str]:
        """One frame decoded as the node decodes it: (HxWx3 uint8 array, ``"rgb"`` or ``"bgr"``)."""
        from mcn_ros.ros.images import compressed_to_array, image_to_array

        convert = compressed_to_array if self.compressed else image_to_array
        return convert(typestore().deserialize_cdr(frame.data, self.msgtype))


def read_camera_bag(path: str | Path, topic: str | None = None) -> CameraBag:
    """Load every message of the camera topic (``topic``, or the bag's only Image/CompressedImage topic).

    Only the topic's Image/CompressedImage connections are read, whether ``topic`` is given or found: one
    warning names the connections of other types on it (they are neither replayed nor evaluated), and a
    topic with none of a camera type is refused. A CompressedImage frame's size is read from its JPEG/PNG
    header (0x0 when it has none that can be read: its size is then not checked against the ground truth).
    """
    path = Path(path)
    store = typestore()
    with open_bag(path) as reader:
        connections = reader.connections
        if topic is not None:
            on_topic = [c for c in connections if c.topic == topic]
            if not on_topic:
                raise BagError(f"bag {path} has no topic {topic} (topics: {_topics_listing(reader)})")
            chosen = [c for c in on_topic if c.msgtype in CAMERA_TYPES]
            if not chosen:
                raise BagError(
                    f"topic {topic} in bag {path} is {on_topic[0].msgtype}, expected one of "
                    f"{', '.join(CAMERA_TYPES)}"
                )
        else:
            cameras = [c for c in connections if c.msgtype in CAMERA_TYPES]
            names = sorted({c.topic for c in cameras})
            if not names:
                raise BagError(
                    f"bag {path} has no camera topic ({' or '.join(CAMERA_TYPES)}); "
                    f"topics: {_topics_listing(reader)}"
                )
            if len(names) > 1:
                raise BagError(
                    f"bag {path} has several camera topics ({', '.join(names)}): choose one with --topic"
                )
            topic = names[0]
            on_topic = [c for c in connections if c.topic == topic]
            chosen = [c for c in on_topic if c.msgtype in CAMERA_TYPES]
        others = [c for c in on_topic if c.msgtype not in CAMERA_TYPES]
        if others:
            counts: dict[str, int] = {}
            for c in others:
                counts[c.msgtype] = counts.get(c.msgtype, 0) + c.msgcount
            listing = ", ".join(f"{n} message(s) of {t}" for t, n in sorted(counts.items()))
            warnings.warn(
                f"bag {path}: topic {topic} also has {listing}; left out (only its "
                f"{' / '.join(sorted({c.msgtype for c in chosen}))} frames are replayed and evaluated)",
                stacklevel=2,
            )
        msgtypes = {c.msgtype for c in chosen}
        if len(msgtypes) > 1:
            raise BagError(f"topic {topic} in bag {path} has several types: {', '.join(sorted(msgtypes))}")
        (msgtype,) = msgtypes
        camera = CameraBag(path, topic, msgtype, storage_of(path), "")
        seen: dict[int, int] = {}
        try:
            for index, (connection, log_time, raw) in enumerate(reader.messages(connections=chosen)):
                message = store.deserialize_cdr(raw, connection.msgtype)
                stamp = int(message.header.stamp.sec) * 1_000_000_000 + int(message.header.stamp.nanosec)
                if stamp in seen:
                    raise BagError(
                        f"bag {path}: messages {seen[stamp]} and {index} on {topic} have the same header "
                        f"stamp {stamp} ns; outputs are matched to frames by stamp, so stamps must be unique"
                    )
                seen[stamp] = index
                camera.frame_id = camera.frame_id or str(message.header.frame_id)
                if camera.compressed:
                    height, width = _compressed_size(message)
                else:
                    height, width = int(message.height), int(message.width)
                camera.frames.append(CameraFrame(stamp, int(log_time), bytes(raw), height, width))
        except BagError:
            raise
        except Exception as error:
            raise BagError(
                f"cannot read the messages of {topic} in bag {path}: truncated or corrupt? ({_reason(error)})"
            ) from error
    expected = sum(c.msgcount for c in chosen)
    if expected and len(camera.frames) != expected:
        raise BagError(
            f"bag {path}: metadata.yaml lists {expected} messages on {topic} but {len(camera.frames)} could "
            "be read: truncated or corrupt?"
        )
    if not camera.frames:
        raise BagError(f"bag {path}: topic {topic} has no messages")
    return camera


def _compressed_size(message: Any) -> tuple[int, int]:
    """(height, width) of a CompressedImage from its JPEG/PNG header; (0, 0) when that cannot be read."""
    from mcn_ros.ros.images import ImageError, compressed_size

    try:
        size = compressed_size(message.data)
    except ImageError:  # a corrupt header: the node refuses the frame when it is replayed
        return 0, 0
    return size if size is not None else (0, 0)


@dataclass
class OutputMessage:
    """A deserialized output message with its time in the bag (ns, the recorder's receive time)."""

    log_time_ns: int
    stamp_ns: int
    message: Any


@dataclass
class OutputBag:
    """The messages of an output bag, per topic, with each topic's message type."""

    path: Path
    msgtypes: dict[str, str]
    messages: dict[str, list[OutputMessage]]

    def topics_of_type(self, msgtype: str) -> list[str]:
        return sorted(t for t, m in self.msgtypes.items() if m == msgtype)


def _stamped(store: Any, msgtype: str) -> bool:
    """Whether messages of ``msgtype`` begin with a ``std_msgs/Header`` named ``header``."""
    fields = store.fielddefs[msgtype][1]
    return bool(fields) and fields[0][0] == "header" and fields[0][1][1] == "std_msgs/msg/Header"


def read_output_bag(path: str | Path, topics: Sequence[str] | None = None) -> OutputBag:
    """Deserialize every message (of ``topics``, default all) of a bag of the player / ``ros2 bag record``.

    Topics of types this typestore does not know, or without a header (``/rosout``, ``/parameter_events``,
    ``/tf`` of a ``ros2 bag record -a``), are left out: outputs are matched to frames by header stamp.
    """
    path = Path(path)
    store = typestore()
    out = OutputBag(path, {}, {})
    with open_bag(path) as reader:
        chosen = [c for c in reader.connections if topics is None or c.topic in topics]
        # e.g. a debug topic of a foreign type, or the log and parameter events of a recording
        chosen = [c for c in chosen if c.msgtype in store.types and _stamped(store, c.msgtype)]
        for c in chosen:
            out.msgtypes[c.topic] = c.msgtype
            out.messages.setdefault(c.topic, [])
        try:
            for connection, log_time, raw in reader.messages(connections=chosen):
                message = store.deserialize_cdr(raw, connection.msgtype)
                stamp = int(message.header.stamp.sec) * 1_000_000_000 + int(message.header.stamp.nanosec)
                out.messages[connection.topic].append(OutputMessage(int(log_time), stamp, message))
        except Exception as error:
            raise BagError(
                f"cannot read the messages of bag {path}: truncated or corrupt? ({_reason(error)})"
            ) from error
    return out


def storage_of(path: Path) -> str:
    """The storage plugin of a rosbag2 folder, by its files: "mcap", "sqlite3" or "unknown"."""
    if any(path.glob("*.mcap")):
        return "mcap"
    return "sqlite3" if any(path.glob("*.db3")) else "unknown"


# -- writing -----------------------------------------------------------------------------------------------
def _storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGES:
        raise BagError(f"storage {storage!r}: expected one of {', '.join(STORAGES)}")
    return StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3


def _latched_qos() -> Any:
    """Reliable, transient-local, keep last 1; every duration unspecified (the rmw default), liveliness
    automatic."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    unspecified = QosTime(sec=0, nsec=0)
    return Qos(
        QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, unspecified,
        unspecified, QosLiveliness.AUTOMATIC, unspecified, False,
    )  # fmt: skip


class OutputBagWriter:
    """A rosbag2 writer (version 9) of already serialized messages: ``add_topic`` then ``write``."""

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import Writer

        self._writer = Writer(Path(path), version=9, storage_plugin=_storage_plugin(storage))
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        """A topic of ``msgtype``; ``latched``: recorded as offered reliable and transient-local, depth 1 (as
        the node's label and pose infos are), so that ``ros2 bag play`` republishes it so and a late joiner
        that asks for transient-local still gets it (a topic without offered profiles is played volatile)."""
        if topic not in self._connections:
            offered = [_latched_qos()] if latched else []
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=typestore(), offered_qos_profiles=offered
            )
            self.counts[topic] = 0

    def write(self, topic: str, time_ns: int, data: bytes | memoryview) -> None:
        self._writer.write(self._connections[topic], int(time_ns), data)
        self.counts[topic] += 1

    def set_custom_data(self, key: str, value: str) -> None:
        self._writer.set_custom_data(key, value)

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


def serialize(message: Any, msgtype: str) -> bytes:
    """CDR bytes of a ``rosbags`` message object."""
    return bytes(typestore().serialize_cdr(message, msgtype))


# -- files -------------------------------------------------------------------------------------------------
def content_hash(path: str | Path) -> str:
    """sha256 over a file, or over a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_output(final: str | Path, overwrite: bool = False, keep_failed: bool = False) -> Iterator[Path]:
    """Yield a path to write ``final`` at (same name, in a hidden temporary folder beside it).

    On success the result is renamed to ``final`` (an existing ``final`` is replaced only with
    ``overwrite``, and only then); on any failure ``final`` is left as it was, and what was written is
    removed, or with ``keep_failed`` (a replay: its node log, the frames answered so far) moved to
    ``<final>.failed-<pid>`` beside it, which the error message (or, for other exceptions than a
    :class:`BagError`, a line on stderr) names.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise BagError(f"{final} exists already; pass --overwrite to replace it, or choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging / final.name
        replace_path(staging / final.name, final)
    except BaseException as error:
        written = staging / final.name
        if keep_failed and written.exists():
            kept = final.parent / f"{final.name}.failed-{os.getpid()}"
            replace_path(written, kept)
            where = f"what it wrote before failing is in {kept}"
            if isinstance(error, BagError) and len(error.args) == 1:
                error.args = (f"{error.args[0]}; {where}",)  # the same error, its one line naming the folder
            else:
                print(f"{type(error).__name__}: {where}", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_path(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first and deleted afterwards."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists() or final.is_symlink():
        final.rename(old)
    new.rename(final)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename (never a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
