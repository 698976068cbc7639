"""Pure-Python install of mcn_ros (model runtime, evaluation), without any ROS.

`pip install -e .` is for people who only run the model; `pip install -e training` adds the training package
(mcn_training, in training/mcn_training/). The ROS package (messages, node, launch files) is built by colcon
from CMakeLists.txt; `make setup` does all three.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    """Pinned requirements from requirements/<name>.txt, the one place where versions are chosen."""
    lines = (HERE / "requirements" / f"{name}.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="mcn_ros",
    version="0.1.0",
    description="Multitask-CenterNet (detection, human pose, segmentation) runtime, training and ROS 2 node",
    python_requires=">=3.10",
    packages=find_packages(include=["mcn_ros", "mcn_ros.*"]),
    install_requires=read_requirements("runtime"),
    extras_require={"dev": read_requirements("dev")},
    entry_points={
        "console_scripts": [
            "mcn_node = mcn_ros.ros.node:main",
        ]
    },
)
