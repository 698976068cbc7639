"""Rosbag replay evaluation: bags, replay into the running node, and the report (ROS-free where possible)."""
