"""Launch the mcn_ros perception node (and optionally RViz).

    ros2 launch mcn_ros mcn.launch.py weights:=/path/model.safetensors image:=/camera/image_raw rviz:=true

Arguments: weights, params_file (default: the installed config/mcn.yaml), image (camera topic),
namespace, autostart (configure + activate without a lifecycle manager; default true), rviz.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    """The node with its parameter file, weights, camera remap and namespace; RViz on request."""
    share = Path(get_package_share_directory("mcn_ros"))
    arguments = [
        DeclareLaunchArgument(
            "weights", default_value="", description="Path of the .safetensors weights file"
        ),
        DeclareLaunchArgument(
            "params_file", default_value=str(share / "config" / "mcn.yaml"), description="Node parameter file"
        ),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="Camera image topic"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument(
            "autostart",
            default_value="true",
            description="Configure and activate without a lifecycle manager",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz with config/mcn.rviz"),
    ]
    node = Node(
        package="mcn_ros",
        executable="mcn_node",
        name="mcn_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"weights": LaunchConfiguration("weights"), "autostart": LaunchConfiguration("autostart")},
        ],
        remappings=[("image", LaunchConfiguration("image"))],
        output="screen",
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", str(share / "config" / "mcn.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
    return LaunchDescription([*arguments, node, rviz])
