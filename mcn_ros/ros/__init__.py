"""The ROS 2 side of mcn_ros: the only package that imports rclpy."""
