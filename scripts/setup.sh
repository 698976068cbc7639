#!/usr/bin/env bash
# One-command set-up of the development environment (called by `make setup`).
#
# - No ROS 2 sourced (ROS_DISTRO unset): .venv gets the pinned Python dependencies (requirements/runtime.txt,
#   numpy 2) and ROS 2 Kilted from PyPI wheels; colcon builds vision_msgs (ros_deps/, wire-identical to
#   upstream 4.1.1) and mcn_ros. MCN_ROS_WHEELS=jazzy builds the same with ROS 2 Jazzy's wheels and the
#   distro pins (requirements/distro.txt, numpy 1.26) in .venv-jazzy / build-jazzy / install-jazzy
#   (mcn_env_jazzy.sh): the second stage of `make test`. The wheels are built for CPython 3.11 only.
# - A sourced ROS 2 distro (Humble, Jazzy, Kilted): .venv sees the distro's Python packages
#   (--system-site-packages), installs requirements/distro.txt with numpy held at the distro's own version
#   (its message packages are C extensions built against it), no ROS wheels, and colcon builds mcn_ros only,
#   against the distro's vision_msgs.
# Each writes its activation script: `source mcn_env.sh` gives rclpy, the messages and the package.
# Each step is skipped when the files it depends on have not changed since it last ran. A check that fails
# stops before anything is created or changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# With mcn_env.sh sourced, python3 is this checkout's venv, which a set-up of another kind replaces: the
# Python it was made from makes the new one (a venv removed under the running set-up ended it half done).
case "$(command -v "$PYTHON" 2>/dev/null || true)" in
  "$ROOT"/.venv*/*) PYTHON="$("$PYTHON" -c 'import sys; print(sys._base_executable)')" ;;
esac

# The setup.bash of the sourced distro: the one above its `ros2` (/opt/ros/<distro>/bin/ros2, or a source
# build's install/bin/ros2), else /opt/ros/<distro>/; none: empty.
distro_setup() {
  local dir
  dir="$(dirname "$(command -v ros2 2>/dev/null || echo /nonexistent/ros2)")"
  case "$dir" in "$ROOT"/*) dir="/nonexistent" ;; esac  # a wheels venv's ros2 is no distro
  while [ "$dir" != "/" ] && [ "$dir" != "." ]; do
    if [ -f "$dir/setup.bash" ]; then echo "$dir/setup.bash"; return; fi
    dir="$(dirname "$dir")"
  done
  if [ -f "/opt/ros/$ROS_DISTRO/setup.bash" ]; then echo "/opt/ros/$ROS_DISTRO/setup.bash"; fi
}

SUPPORTED_DISTROS="humble jazzy kilted"
LOCK=""  # the wheels set-ups' lock (below); a sourced distro's set-up has none
command -v "$PYTHON" >/dev/null 2>&1 || die "no Python at PYTHON=$PYTHON: install python3 (3.10 to 3.12) or set PYTHON"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
  || die "PYTHON=$PYTHON does not run"

if [ -n "${ROS_DISTRO:-}" ]; then
  MODE="distro"
  SUFFIX=""
  case " $SUPPORTED_DISTROS " in
    *" $ROS_DISTRO "*) ;;
    *) die "ROS_DISTRO=$ROS_DISTRO is not a distro this project supports ($SUPPORTED_DISTROS): source one of those, or unset ROS_DISTRO to use ROS 2 Kilted from PyPI wheels" ;;
  esac
  case "$PY_VERSION" in
    3.10|3.11|3.12) ;;
    *) die "$PYTHON is Python $PY_VERSION; requirements/distro.txt is checked for 3.10 (Humble) and 3.12 (Jazzy, Kilted): run with the distro's python3 (PYTHON=/usr/bin/python3)" ;;
  esac
  command -v ros2 >/dev/null 2>&1 || [ -d "/opt/ros/$ROS_DISTRO" ] || die "ROS_DISTRO=$ROS_DISTRO is set but no such distro is installed"
  "$PYTHON" -c "import rclpy" 2>/dev/null || die "ROS_DISTRO=$ROS_DISTRO is set but its rclpy does not import with $PYTHON; source /opt/ros/$ROS_DISTRO/setup.bash first"
  "$PYTHON" -c "import vision_msgs.msg" 2>/dev/null \
    || die "the sourced distro has no vision_msgs: sudo apt install ros-$ROS_DISTRO-vision-msgs"
  DISTRO_NUMPY="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)" \
    || die "the distro's Python has no numpy (its message packages need it): sudo apt install python3-numpy"
  DISTRO_SETUP="$(distro_setup)"
  [ -n "$DISTRO_SETUP" ] \
    || die "cannot find the setup.bash of the sourced $ROS_DISTRO (none above its ros2 at $(command -v ros2), none in /opt/ros/$ROS_DISTRO): mcn_env.sh sources it"
  REQUIREMENTS=(requirements/distro.txt requirements/dev.txt)
else
  MODE="wheels"
  ROS_WHEELS="${MCN_ROS_WHEELS:-kilted}"
  case "$ROS_WHEELS" in
    kilted) SUFFIX=""; REQUIREMENTS=(requirements/runtime.txt requirements/dev.txt requirements/ros-wheels.txt) ;;
    jazzy) SUFFIX="-jazzy"; REQUIREMENTS=(requirements/distro.txt requirements/dev.txt requirements/ros-wheels-jazzy.txt) ;;
    *) die "MCN_ROS_WHEELS=$ROS_WHEELS: the ROS 2 wheels used here are kilted (default) or jazzy" ;;
  esac
  # Every package the set-up installs, held at the versions tested (scripts/lock_requirements.sh makes it).
  LOCK="requirements/lock-wheels-$ROS_WHEELS.txt"
  [ "$PY_VERSION" = "3.11" ] || die "$PYTHON is Python $PY_VERSION, but ROS 2's PyPI wheels are built for CPython 3.11 only: install python3.11 and run PYTHON=python3.11 make setup, or source a ROS 2 distro ($SUPPORTED_DISTROS) first"
  MODE="wheels-$ROS_WHEELS"
fi
# What the colcon step needs (the messages' bindings are C/C++ extensions), checked before anything is made.
command -v cmake >/dev/null 2>&1 || die "cmake is needed to build the messages: sudo apt install cmake build-essential"
{ command -v cc && command -v c++; } >/dev/null 2>&1 \
  || die "a C and a C++ compiler are needed to build the messages: sudo apt install build-essential"
"$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || die "Python $PY_VERSION's headers (Python.h) are missing, and the messages' Python bindings are C extensions: sudo apt install python$PY_VERSION-dev"
"$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 \
  || die "Python $PY_VERSION cannot make virtual environments: sudo apt install python$PY_VERSION-venv"
VENV="$ROOT/.venv$SUFFIX"
BUILD="$ROOT/build$SUFFIX"
INSTALL="$ROOT/install$SUFFIX"
ENV_FILE="$ROOT/mcn_env${SUFFIX/-/_}.sh"

# 1. Python environment -----------------------------------------------------------------------------------
# A venv made for another mode or Python (e.g. before a distro was sourced) is made anew; its pyvenv.cfg says
# which Python made it and whether it sees the system's (the distro's) packages.
venv_kind() {
  local key value system="" version=""
  while IFS=' =' read -r key value; do
    case "$key" in
      include-system-site-packages) system="$value" ;;
      version) version="${value%.*}" ;;
    esac
  done < "$1/pyvenv.cfg"
  echo "system-site-packages=$system python$version"
}
if [ "$MODE" = "distro" ]; then SYSTEM_SITE=true; else SYSTEM_SITE=false; fi
VENV_KIND="system-site-packages=$SYSTEM_SITE python$PY_VERSION"
if [ -f "$VENV/pyvenv.cfg" ] && [ "$(venv_kind "$VENV")" != "$VENV_KIND" ]; then
  log "$VENV has $(venv_kind "$VENV"), this set-up needs $VENV_KIND: making it anew"
  rm -rf "$VENV"
fi
PY_STAMP="$MODE $VENV_KIND ${DISTRO_NUMPY:-} $(digest "${REQUIREMENTS[@]}" ${LOCK:-} requirements/pip.txt setup.py training/pyproject.toml)"
if [ "$(cat "$VENV/.mcn_python_stamp" 2>/dev/null)" != "$PY_STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV ($MODE, $VENV_KIND)"
    if [ "$MODE" = "distro" ]; then
      "$PYTHON" -m venv --system-site-packages "$VENV"
    else
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  log "installing pinned dependencies (first run: a few minutes, torch is large)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade -r requirements/pip.txt
  pip_args=()
  for file in "${REQUIREMENTS[@]}"; do pip_args+=(-r "$file"); done
  [ -z "${LOCK:-}" ] || pip_args+=(-c "$LOCK")
  if [ "$MODE" = "distro" ]; then
    # Never replace the numpy the distro's message packages were compiled against.
    echo "numpy==$DISTRO_NUMPY" > "$VENV/distro-constraints.txt"
    pip_args+=(-c "$VENV/distro-constraints.txt")
    # The distro's colcon where it has one; else the version the wheels mode pins.
    command -v colcon >/dev/null 2>&1 || pip_args+=("$(grep -h '^colcon-common-extensions==' requirements/ros-wheels.txt)")
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_args[@]}" \
    || die "pip could not install ${REQUIREMENTS[*]} (see above); nothing is marked done, so the next make setup tries again"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . -e training
  echo "$PY_STAMP" > "$VENV/.mcn_python_stamp"
else
  log "python environment up to date ($MODE)"
fi
# colcon must not mistake the ROS packages inside the venv (share/*/package.xml) for workspace packages.
touch "$VENV/COLCON_IGNORE"

# 2. The wheels' exported CMake targets name include dirs of the machine that built them -----------------
if [ "$MODE" != "distro" ]; then
  "$VENV/bin/python" - <<'EOF'
import glob, os, sys, sysconfig
import numpy
prefix = sys.prefix
fixes = {
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/core/include": numpy.get_include(),  # numpy 1.x
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
# Everything CMakeLists.txt installs (config/ whole: fastdds.xml, models/, train/ too), and the Python
# environment the bindings are built against (rosidl, numpy).
mapfile -t CONFIG_FILES < <(find config -type f | sort)
BUILD_INPUTS=(package.xml CMakeLists.txt msg/*.msg scripts/mcn_node launch/* "${CONFIG_FILES[@]}")
[ "$MODE" != "distro" ] && BUILD_INPUTS+=(ros_deps/vision_msgs/package.xml ros_deps/vision_msgs/CMakeLists.txt ros_deps/vision_msgs/msg/*.msg)
# What the build was made for: another mode or distro (they share build/ and install/) starts them afresh,
# or CMake's cache keeps the other's packages (a wheels-built vision_msgs under a sourced distro).
BUILD_KIND="$MODE${ROS_DISTRO:+ $ROS_DISTRO} python$PY_VERSION"
BUILD_STAMP="$BUILD_KIND-$(digest "${BUILD_INPUTS[@]}")-$(find mcn_ros -name '*.py' | sort | digest)-$PY_STAMP"
if [ "$(cat "$INSTALL/.mcn_build_stamp" 2>/dev/null)" != "$BUILD_STAMP" ]; then
  if [ -e "$INSTALL" ] && [ "$(cat "$INSTALL/.mcn_build_kind" 2>/dev/null)" != "$BUILD_KIND" ]; then
    log "$INSTALL was built for '$(cat "$INSTALL/.mcn_build_kind" 2>/dev/null || echo another set-up)', this is '$BUILD_KIND': building afresh"
    rm -rf "$BUILD" "$INSTALL"
  fi
  log "building messages and the mcn_ros package with colcon"
  mkdir -p "$BUILD"
  base_paths=(.)
  if [ "$MODE" != "distro" ]; then
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
  echo "$BUILD_KIND" > "$INSTALL/.mcn_build_kind"
  echo "$BUILD_STAMP" > "$INSTALL/.mcn_build_stamp"
else
  log "messages and package up to date"
fi

# 4. Activation script ----------------------------------------------------------------------------------
{
  echo "# Generated by scripts/setup.sh ($MODE mode). Usage: source ${ENV_FILE##*/}"
  if [ "$MODE" = "distro" ]; then
    echo "source '$DISTRO_SETUP'"
  fi
  echo "source '$VENV/bin/activate'"
  echo "export AMENT_PREFIX_PATH=\"$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}\""
  [ "$MODE" != "distro" ] && echo "export CMAKE_PREFIX_PATH=\"$VENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}\""
  echo ". '$INSTALL/local_setup.bash'"
  # The source tree first, so edits to mcn_ros/*.py need no rebuild; mcn_ros/__init__.py merges in mcn_ros.msg.
  # training/ holds the training package under its import name (training/mcn_training).
  echo "export PYTHONPATH=\"$ROOT:$ROOT/training\${PYTHONPATH:+:\$PYTHONPATH}\""
  echo "export HF_HUB_OFFLINE=1"
} > "$ENV_FILE"
log "done ($MODE mode). Activate with: source ${ENV_FILE##*/}"
