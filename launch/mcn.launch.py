"""Launch the mcn_ros perception node (and optionally RViz).

    ros2 launch mcn_ros mcn.launch.py weights:=/path/model.safetensors image:=/camera/image

Arguments: params_file (default: the installed config/mcn.yaml), weights and autostart (each overrides the
parameter file only when given; autostart is true with the default parameter file), image (camera topic;
with named cameras a pattern such as /sensing/{camera}/image_raw), cameras (names, e.g. front,back: each
camera listens on <name>/image; overrides the file when given), camera_topics (front=/x,back=/y: each named
camera's topic), image_transport (raw, compressed or both: the camera transport subscribed; overrides the
file when given), namespace, use_sim_time (true: the node's clock is /clock; empty: the parameter file's),
log_level (debug, info, warn, error or fatal; empty: info), rviz (RViz with config/mcn.rviz, its topics
moved under the namespace, one set per camera; where rviz2 is not installed a warning, and the node starts
alone), fastdds_profile (default: the installed config/fastdds.xml, Fast DDS shared memory sized for camera
frames; given to the node and RViz unless the environment names a profile already; empty: Fast DDS's
defaults, by naming config/fastdds_defaults.xml, which sets nothing).
The node is a launch_ros LifecycleNode: launch's lifecycle events can drive it and follow its transitions.
What the arguments mean is decided in mcn_ros/ros/launch_args.py. Six cameras (config/six_cameras.yaml):

    ros2 launch mcn_ros mcn.launch.py params_file:=<share>/mcn_ros/config/six_cameras.yaml weights:=... \
        autostart:=true
"""

import os
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from mcn_ros.ros.fastdds import DEFAULTS_PROFILE_NAME, PROFILE_NAME, profile_environment
from mcn_ros.ros.launch_args import (
    DEFAULT_IMAGE_TOPIC,
    NODE_NAME,
    cameras_in_params_file,
    image_remappings,
    log_level_arguments,
    parameter_overrides,
    parse_bool,
    parse_cameras,
    rviz_missing_note,
    write_rviz_config,
)


def generate_launch_description() -> LaunchDescription:
    """The launch arguments, then the nodes made from their values."""
    share = Path(get_package_share_directory("mcn_ros"))
    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=str(share / "config" / "mcn.yaml"), description="Node parameter file"
        ),
        DeclareLaunchArgument(
            "weights",
            default_value="",
            description="Path of the .safetensors weights file (empty: the parameter file's)",
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="",
            description="true: configure and activate, no lifecycle manager (empty: true with the default "
            "parameter file, else the file's value)",
        ),
        DeclareLaunchArgument(
            "image",
            default_value=DEFAULT_IMAGE_TOPIC,
            description="Camera image topic; with named cameras a pattern holding {camera} for each name",
        ),
        DeclareLaunchArgument(
            "cameras",
            default_value="",
            description="Camera names, comma-separated: each listens on <name>/image (empty: the parameter "
            "file's)",
        ),
        DeclareLaunchArgument(
            "camera_topics",
            default_value="",
            description="Named cameras' topics as name=topic pairs, comma-separated "
            "(front=/cams/front/image_raw)",
        ),
        DeclareLaunchArgument(
            "image_transport",
            default_value="",
            description="raw, compressed (<image>/compressed) or both (empty: the parameter file's)",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="",
            description="true: the node's clock is /clock (a bag played with --clock; empty: the parameter "
            "file's, else false)",
        ),
        DeclareLaunchArgument(
            "log_level",
            default_value="",
            description="The node's log level: debug, info, warn, error or fatal",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz with config/mcn.rviz"),
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=str(share / "config" / PROFILE_NAME),
            description="Fast DDS XML profile for the node and RViz (shared memory for camera-sized frames), "
            "unless FASTDDS_/FASTRTPS_DEFAULT_PROFILES_FILE is set; empty: Fast DDS's defaults",
        ),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_nodes, args=[share])])


def launch_nodes(context: LaunchContext, share: Path) -> list[Node]:
    """The node with the parameter file and the overrides given; RViz on request, following the namespace
    (where rviz2 is not installed, a warning instead: the node still starts)."""

    def argument(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    namespace, image, params_file = argument("namespace"), argument("image"), argument("params_file")
    default_params = Path(params_file) == share / "config" / "mcn.yaml"
    cameras_text = argument("cameras")
    overrides = parameter_overrides(
        argument("weights"),
        argument("autostart"),
        default_params,
        cameras_text,
        argument("image_transport"),
        argument("use_sim_time"),
    )
    cameras = (
        parse_cameras(cameras_text)
        if cameras_text
        else cameras_in_params_file(params_file, namespace=namespace)
    )
    remappings, unused = image_remappings(image, cameras, argument("camera_topics"))
    if unused is not None:
        get_logger("launch.user").warning(unused)
    # Empty: Fast DDS's defaults, named as a profile that sets nothing (the node would load fastdds.xml).
    profile = argument("fastdds_profile") or str(share / "config" / DEFAULTS_PROFILE_NAME)
    dds_env = profile_environment(os.environ, profile)
    # A LifecycleNode: launch's lifecycle events (ChangeState, OnStateTransition) can drive and follow it.
    node = LifecycleNode(
        package="mcn_ros",
        executable="mcn_node",
        name=NODE_NAME,
        namespace=namespace,
        parameters=[params_file, *([overrides] if overrides else [])],
        remappings=remappings,
        ros_arguments=log_level_arguments(argument("log_level")),
        output="screen",
        additional_env=dds_env,
    )
    if not parse_bool("rviz", argument("rviz")):
        return [node]
    missing = rviz_missing_note()
    if missing is not None:
        get_logger("launch.user").warning(missing)
        return [node]
    rviz_config = write_rviz_config(share / "config" / "mcn.rviz", namespace, image, cameras)
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", str(rviz_config)],
        output="screen",
        additional_env=dds_env,
    )
    return [node, rviz]
