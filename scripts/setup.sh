#!/usr/bin/env bash
# One-command set-up of the development environment (called by `make setup`).
#
# - No ROS 2 sourced (ROS_DISTRO unset): .venv gets the pinned Python dependencies and ROS 2 Kilted from
#   PyPI wheels; colcon builds vision_msgs (ros_deps/, wire-identical to upstream 4.1.1) and mcn_ros.
# - A sourced ROS 2 distro (Humble, Jazzy, Kilted): .venv sees the distro's Python packages
#   (--system-site-packages), no ROS wheels are installed over it, and colcon builds mcn_ros only, against
#   the distro's vision_msgs.
# Both write mcn_env.sh: `source mcn_env.sh` gives rclpy, the messages and the package.
# Each step is skipped when the files it depends on have not changed since it last ran.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
BUILD="$ROOT/build"
INSTALL="$ROOT/install"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

if [ -n "${ROS_DISTRO:-}" ]; then
  MODE="distro"
  command -v ros2 >/dev/null 2>&1 || [ -d "/opt/ros/$ROS_DISTRO" ] || die "ROS_DISTRO=$ROS_DISTRO is set but no such distro is installed"
  "$PYTHON" -c "import rclpy" 2>/dev/null || die "ROS_DISTRO=$ROS_DISTRO is set but its rclpy does not import with $PYTHON; source /opt/ros/$ROS_DISTRO/setup.bash first"
  "$PYTHON" -c "import vision_msgs.msg" 2>/dev/null \
    || die "the sourced distro has no vision_msgs: sudo apt install ros-$ROS_DISTRO-vision-msgs"
else
  MODE="wheels"
fi

# 1. Python environment -----------------------------------------------------------------------------------
REQS=(requirements/runtime.txt requirements/dev.txt setup.py training/pyproject.toml)
[ "$MODE" = "wheels" ] && REQS+=(requirements/ros-wheels.txt)
PY_STAMP="$MODE-$(digest "${REQS[@]}")"
if [ "$(cat "$VENV/.mcn_python_stamp" 2>/dev/null)" != "$PY_STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV ($MODE mode)"
    if [ "$MODE" = "distro" ]; then
      "$PYTHON" -m venv --system-site-packages "$VENV"
    else
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  log "installing pinned dependencies (first run: a few minutes, torch is large)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  pip_args=(-r requirements/runtime.txt -r requirements/dev.txt)
  [ "$MODE" = "wheels" ] && pip_args+=(-r requirements/ros-wheels.txt)
  [ "$MODE" = "distro" ] && ! command -v colcon >/dev/null 2>&1 && pip_args+=(colcon-common-extensions)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_args[@]}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . -e training
  echo "$PY_STAMP" > "$VENV/.mcn_python_stamp"
else
  log "python environment up to date"
fi
# colcon must not mistake the ROS packages inside the venv (share/*/package.xml) for workspace packages.
touch "$VENV/COLCON_IGNORE"

# 2. The wheels' exported CMake targets name include dirs of the machine that built them -----------------
if [ "$MODE" = "wheels" ]; then
  "$VENV/bin/python" - <<'EOF'
import glob, os, sys, sysconfig
import numpy
prefix = sys.prefix
fixes = {
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
}
for path in glob.glob(os.path.join(prefix, "share", "*", "cmake", "*Export.cmake")):
    text = open(path).read()
    new = text
    for old, replacement in fixes.items():
        new = new.replace(old, replacement)
    if new != text:
        with open(path, "w") as f:
            f.write(new)
EOF
fi

# 3. Messages and the ROS package (colcon) --------------------------------------------------------------
BUILD_INPUTS=(package.xml CMakeLists.txt msg/*.msg scripts/mcn_node launch/* config/*.yaml config/*.rviz)
[ "$MODE" = "wheels" ] && BUILD_INPUTS+=(ros_deps/vision_msgs/package.xml ros_deps/vision_msgs/CMakeLists.txt ros_deps/vision_msgs/msg/*.msg)
BUILD_STAMP="$MODE-$(digest "${BUILD_INPUTS[@]}")-$(find mcn_ros -name '*.py' | sort | digest)"
if [ "$(cat "$INSTALL/.mcn_build_stamp" 2>/dev/null)" != "$BUILD_STAMP" ]; then
  log "building messages and the mcn_ros package with colcon"
  mkdir -p "$BUILD"
  base_paths=(.)
  if [ "$MODE" = "wheels" ]; then
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    base_paths=(ros_deps/vision_msgs .)
    COLCON="$VENV/bin/colcon"
  else
    COLCON="$(command -v colcon || echo "$VENV/bin/colcon")"
  fi
  # The venv's Python must be the one the generated bindings are built for.
  PATH="$VENV/bin:$PATH" "$COLCON" --log-base "$BUILD/log" build \
    --base-paths "${base_paths[@]}" --build-base "$BUILD" --install-base "$INSTALL" \
    --event-handlers console_direct- console_stderr- \
    --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$VENV/bin/python" -Wno-dev \
    > "$BUILD/colcon.log" 2>&1 || { tail -n 40 "$BUILD/colcon.log" >&2; die "colcon build failed (full log: $BUILD/colcon.log)"; }
  echo "$BUILD_STAMP" > "$INSTALL/.mcn_build_stamp"
else
  log "messages and package up to date"
fi

# 4. Activation script ----------------------------------------------------------------------------------
{
  echo "# Generated by scripts/setup.sh ($MODE mode). Usage: source mcn_env.sh"
  if [ "$MODE" = "distro" ]; then
    echo "source /opt/ros/$ROS_DISTRO/setup.bash"
  fi
  echo "source '$VENV/bin/activate'"
  echo "export AMENT_PREFIX_PATH=\"$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}\""
  [ "$MODE" = "wheels" ] && echo "export CMAKE_PREFIX_PATH=\"$VENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}\""
  echo ". '$INSTALL/local_setup.bash'"
  # The source tree first, so edits to mcn_ros/*.py need no rebuild; mcn_ros/__init__.py merges in mcn_ros.msg.
  # training/ holds the training package under its import name (training/mcn_training).
  echo "export PYTHONPATH=\"$ROOT:$ROOT/training\${PYTHONPATH:+:\$PYTHONPATH}\""
  echo "export HF_HUB_OFFLINE=1"
} > "$ROOT/mcn_env.sh"
log "done ($MODE mode). Activate with: source mcn_env.sh"
