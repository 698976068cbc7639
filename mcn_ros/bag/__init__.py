"""rosbag2 tooling on ``rosbags``: make a camera bag, replay it through the node, evaluate, report.

    python -m mcn_ros.bag make      COCO-format images -> a bag of sensor_msgs/Image (+ ground_truth.json)
    python -m mcn_ros.bag replay    the bag -> a running node (lockstep or at rate) -> an output bag
    python -m mcn_ros.bag evaluate  output bag(s) + ground truth -> accuracy, latency, report.json / .md
    python -m mcn_ros.bag run       start the node, replay (lockstep, then at rate), evaluate, report

The report's files (report.json, report.md, plots, video) are written by :mod:`mcn_ros.bag.report`.
Everything here is free of rclpy (bag I/O, pacing bookkeeping, evaluation are tested without DDS); only the
player (:mod:`mcn_ros.ros.player`) talks to the node, and it is imported by the CLI where it is needed.
"""


class BagError(RuntimeError):
    """A bag, a ground truth, a node or a run that cannot be used: the message names the problem."""
