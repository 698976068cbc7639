#!/usr/bin/env bash
# `make test-jazzy` (stage 2 of `make test`): the tests that rclpy 7 and numpy 1.x can break, on ROS 2 Jazzy's
# PyPI wheels with numpy 1.26 and requirements/distro.txt, in .venv-jazzy / install-jazzy.
# Usage: scripts/test_jazzy.sh TEST_FILE...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${ROS_DISTRO:-}" ]; then
  echo "[test-jazzy] skipped: ROS_DISTRO=$ROS_DISTRO is sourced, and stage 1 ran on it"
  exit 0
fi
# Nothing of stage 1's environment (a sourced mcn_env.sh) may leak into this one.
unset PYTHONPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH VIRTUAL_ENV
MCN_ROS_WHEELS=jazzy bash scripts/setup.sh
set +u  # the generated setup scripts read unset variables
source ./mcn_env_jazzy.sh
set -u
python - <<'PY'
import numpy, rclpy  # noqa: E401  the stage's premise, printed into the log
from importlib.metadata import version
print(f"[test-jazzy] rclpy {version('ros-rclpy')} numpy {numpy.__version__}")
assert version("ros-rclpy").startswith("7.") and numpy.__version__.startswith("1."), "not the Jazzy stage"
PY
# onnx and onnxruntime come with requirements/dev.txt on Python >= 3.11: there their absence is a failure.
MCN_REQUIRE_ONNX=$(python -c 'import sys; print(int(sys.version_info >= (3, 11)))') MCN_REQUIRE_ROS=1 python -m pytest "$@"
