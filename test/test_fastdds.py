"""The Fast DDS profile for camera-sized frames: when it is handed out, what it holds, and a real node
process running with it (its shared-memory segment sized by the profile, frames answered)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from nodetools import REPO, Client, image_message, make_weights, start_node, stop_node

from mcn_ros.ros import fastdds
from mcn_ros.ros.domain import claim_domain_id
from mcn_ros.ros.fastdds import PROFILE_VARIABLES, fast_dds_major, profile_environment, shipped_profile

PROFILE = REPO / "config" / "fastdds.xml"
FULL_HD_RGB8 = 1920 * 1080 * 3


def test_the_profile_goes_where_nobody_chose_another() -> None:
    path = str(PROFILE.resolve())
    fast_dds_3 = {"FASTDDS_DEFAULT_PROFILES_FILE": path}
    fast_dds_2 = {"FASTRTPS_DEFAULT_PROFILES_FILE": path}
    assert profile_environment({"ROS_DISTRO": "kilted"}, PROFILE) == fast_dds_3
    assert profile_environment({"ROS_DISTRO": "rolling"}, PROFILE) == fast_dds_3
    assert profile_environment({"ROS_DISTRO": "jazzy"}, PROFILE) == fast_dds_2
    assert profile_environment({"ROS_DISTRO": "humble"}, str(PROFILE)) == fast_dds_2
    assert profile_environment({}, PROFILE) == {**fast_dds_3, **fast_dds_2}  # nothing known: both
    kilted = {"ROS_DISTRO": "kilted", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}
    assert profile_environment(kilted, PROFILE) == fast_dds_3
    assert (
        profile_environment({**kilted, "RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp"}, PROFILE)
        == fast_dds_3
    )
    assert profile_environment({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, PROFILE) == {}
    assert profile_environment({"RMW_IMPLEMENTATION": "rmw_zenoh_cpp"}, PROFILE) == {}
    for name in PROFILE_VARIABLES:  # the user's own profile, or an explicit empty one, wins
        assert profile_environment({name: "/etc/mine.xml"}, PROFILE) == {}
        assert profile_environment({name: ""}, PROFILE) == {}
    assert profile_environment({}, None) == {} and profile_environment({}, "") == {}


def test_the_installed_fast_dds_decides_the_variable(tmp_path: Path) -> None:
    for library, major in (("libfastdds.so.3.2", 3), ("libfastrtps.so.2.14", 2)):
        prefix = tmp_path / str(major)
        (prefix / "lib").mkdir(parents=True)
        (prefix / "lib" / library).write_bytes(b"")
        assert fast_dds_major({"AMENT_PREFIX_PATH": f"/nonexistent{os.pathsep}{prefix}"}) == major
        environ = {"AMENT_PREFIX_PATH": str(prefix), "ROS_DISTRO": "kilted" if major == 2 else "jazzy"}
        assert fast_dds_major(environ) == major  # the library found wins over the distro's name
        assert list(profile_environment(environ, PROFILE)) == [PROFILE_VARIABLES[3 - major]]
    assert fast_dds_major({"ROS_DISTRO": "jazzy"}) == 2 and fast_dds_major({"ROS_DISTRO": "kilted"}) == 3
    assert fast_dds_major({}) is None


def test_the_shipped_profile_is_found_in_the_checkout_and_in_an_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shipped_profile({}) == PROFILE
    installed = tmp_path / "share" / "mcn_ros" / "config" / "fastdds.xml"
    installed.parent.mkdir(parents=True)
    installed.write_text(PROFILE.read_text())
    assert shipped_profile({"AMENT_PREFIX_PATH": str(tmp_path)}) == PROFILE  # the checkout's comes first
    monkeypatch.setattr(
        fastdds, "_CHECKOUT", tmp_path / "no_checkout" / "fastdds.xml"
    )  # an installed package
    assert shipped_profile({"AMENT_PREFIX_PATH": f"/nonexistent{os.pathsep}{tmp_path}"}) == installed
    assert shipped_profile({"AMENT_PREFIX_PATH": "/nonexistent"}) is None


def test_a_profile_that_is_no_file_is_refused_when_it_would_be_used(tmp_path: Path) -> None:
    missing = tmp_path / "fastdsd.xml"
    with pytest.raises(FileNotFoundError, match=r"fastdsd\.xml does not exist"):
        profile_environment({"ROS_DISTRO": "kilted"}, missing)
    assert profile_environment({"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}, missing) == {}  # not used


def test_the_profile_gives_shared_memory_room_for_full_hd_frames_and_keeps_udp() -> None:
    root = ET.parse(PROFILE).getroot()
    ns = {"p": root.tag.partition("}")[0].lstrip("{")}
    descriptors = {
        d.findtext("p:transport_id", namespaces=ns): d for d in root.iterfind(".//p:transport_descriptor", ns)
    }
    participant = root.find(".//p:participant", ns)
    assert participant is not None and participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind(".//p:userTransports/p:transport_id", ns)]
    kinds = {descriptors[name].findtext("p:type", namespaces=ns) for name in used}
    assert kinds == {"SHM", "UDPv4"}  # other hosts still reach the node
    shm = next(
        descriptors[name] for name in used if descriptors[name].findtext("p:type", namespaces=ns) == "SHM"
    )
    assert int(shm.findtext("p:segment_size", namespaces=ns) or 0) >= 2 * FULL_HD_RGB8


def shm_segments_kib(pid: int | str) -> dict[str, int]:
    """The Fast DDS shared-memory segments (not the port queues) mapped by process ``pid``, with their
    sizes in KiB (files named fastdds_* by Fast DDS 3, fastrtps_* by 2.x)."""
    sizes = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        name = fields[5] if len(fields) >= 6 else ""
        if name.startswith(("/dev/shm/fastdds_", "/dev/shm/fastrtps_")) and "port" not in name:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            sizes[name] = sizes.get(name, 0) + (end - start) // 1024
    return sizes


def fast_dds_node_test(test: Callable[..., None]) -> Callable[..., None]:
    """A test of a node over Fast DDS (the profiles are Fast DDS's): ROS needed, skipped on another rmw."""
    only_fast_dds = pytest.mark.skipif(
        not os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps"),
        reason="the profile is Fast DDS's",
    )
    return pytest.mark.usefixtures("ros")(only_fast_dds(test))


def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No profile variable in this process (a bag replay run in-process sets one), and a domain of the test's
    own: the segments a node maps are its own and those of its peers, and participants that earlier tests
    left in the run's domain (some with the profile) would be among them."""
    for name in PROFILE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(claim_domain_id(101, 100)))


@fast_dds_node_test
def test_a_node_with_the_profile_maps_a_large_segment_and_answers_camera_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node started by hand (no launch file, no profile variable) loads config/fastdds.xml itself, as
    the launch file gives it: 640x480 frames run without the default segment's losses."""
    from vision_msgs.msg import Detection2DArray

    isolated(monkeypatch)
    weights = make_weights(tmp_path / "model.safetensors")
    env = profile_environment({k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}, PROFILE)
    assert len(env) == 1, env  # the installed Fast DDS is recognised
    process = start_node("-p", f"weights:={weights}", "-p", "autostart:=true")  # the variable unset
    c = Client()
    c.subscribe("detections", Detection2DArray)
    try:
        frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # 0.9 MB
        message = image_message(frame, stamp=(7, 1))
        answered = c.publish_until(
            message, lambda: any(m.header.stamp.sec == 7 for m in c.messages("detections")), timeout=120
        )
        assert answered, "no detections for a 640x480 frame"
        # The node maps its own segment and those of its peers in this domain: this process, which loads
        # no profile (the variables removed above), has Fast DDS's default size; the 16 MiB one is the node's.
        segments = shm_segments_kib(process.pid)
        assert segments and max(segments.values()) >= 16 * 1024, segments  # not Fast DDS's 512 KiB
    finally:
        c.close()
        log = stop_node(process)
    assert "XMLPARSER" not in log and "Traceback" not in log, log
    variable, path = next(iter(env.items()))
    assert f"Fast DDS profile {path} (shared memory sized for camera frames; {variable} chooses" in log, log
    assert "deprecated" not in log, log  # the variable this distro's Fast DDS reads, not the old name


@fast_dds_node_test
def test_the_defaults_profile_keeps_fast_dds_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/fastdds_defaults.xml, what `fastdds_profile:=` (empty) names: the node keeps Fast DDS's default
    segment instead of loading config/fastdds.xml itself, and Fast DDS reads the file without complaint."""
    from vision_msgs.msg import Detection2DArray

    isolated(monkeypatch)
    defaults = shipped_profile(name=fastdds.DEFAULTS_PROFILE_NAME)
    assert defaults is not None and defaults.name == "fastdds_defaults.xml"
    # It sets nothing: no default participant profile, no transports. (The segments a node maps cannot tell
    # here: Fast DDS reads a process's profile once, so this test process's may be config/fastdds.xml.)
    root = ET.parse(defaults).getroot()
    assert not [
        e for e in root.iter() if e.get("is_default_profile") or e.tag.endswith("transport_descriptors")
    ]
    weights = make_weights(tmp_path / "model.safetensors")
    env = profile_environment({k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}, defaults)
    process = start_node("-p", f"weights:={weights}", "-p", "autostart:=true", env=env)
    c = Client()
    c.subscribe("detections", Detection2DArray)
    try:
        frame = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
        answered = c.publish_until(
            image_message(frame, stamp=(8, 1)), lambda: bool(c.messages("detections")), timeout=120
        )
        assert answered, "no detections"
    finally:
        c.close()
        log = stop_node(process)
    assert "XMLPARSER" not in log and "Traceback" not in log, log
    assert "Fast DDS profile" not in log, log  # the node did not load config/fastdds.xml
