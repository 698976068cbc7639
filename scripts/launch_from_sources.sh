#!/usr/bin/env bash
# Run the launch tests (test/test_package.py: the launch file under LaunchService, and `ros2 launch mcn_ros
# mcn.launch.py`) on the PyPI-wheel set-up, which has no launch, launch_ros or ros2cli: PyPI has no wheels of
# them, so `make test` skips those two tests. This builds them from source checkouts instead.
#
# Usage: scripts/launch_from_sources.sh SOURCES [ENV_SCRIPT]
#   SOURCES     a folder holding checkouts of github.com/ros2/{launch,launch_ros,ros2cli,rcl_interfaces} at the
#               branch (or release tag) of the distro whose wheels ENV_SCRIPT uses, e.g.
#               for repo in launch launch_ros ros2cli rcl_interfaces; do
#                 git clone -b kilted https://github.com/ros2/$repo SOURCES/$repo; done
#   ENV_SCRIPT  mcn_env.sh (Kilted wheels, the default) or mcn_env_jazzy.sh (after `make test-jazzy`)
# It builds composition_interfaces (launch_ros imports it) with colcon into SOURCES/install, installs the pure
# Python packages and osrf_pycommon (requirements/launch-check.txt) into SOURCES/site, writes SOURCES/env.sh
# (source it after ENV_SCRIPT to use `ros2 launch` by hand) and runs the tests with MCN_REQUIRE_LAUNCH=1, so
# that a missing piece fails instead of skipping. With a sourced ROS 2 distro this is not needed: `make test`
# runs those tests there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "[launch-from-sources] $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: scripts/launch_from_sources.sh SOURCES [ENV_SCRIPT]"
SOURCES="$(cd "$1" && pwd)" || die "$1 is not a folder"
ENV_SCRIPT="${2:-mcn_env.sh}"
[ -z "${ROS_DISTRO:-}" ] || die "ROS_DISTRO=$ROS_DISTRO is sourced: its launch tools are used by make test already"
[ -f "$ENV_SCRIPT" ] || die "$ENV_SCRIPT is missing: run make setup (or make test-jazzy for mcn_env_jazzy.sh)"
for repo in launch launch_ros ros2cli rcl_interfaces; do
  [ -d "$SOURCES/$repo" ] || die "$SOURCES/$repo is missing: clone github.com/ros2/$repo there (the distro's branch)"
done

set +u  # the generated setup scripts read unset variables
# shellcheck disable=SC1090
source "./$ENV_SCRIPT"
set -u
PACKAGES=(launch/launch launch/launch_xml launch/launch_yaml launch_ros/launch_ros launch_ros/ros2launch
          ros2cli/ros2cli ros2cli/ros2pkg)

if [ ! -f "$SOURCES/install/local_setup.bash" ]; then
  echo "[launch-from-sources] building composition_interfaces with colcon"
  colcon --log-base "$SOURCES/log" build --base-paths "$SOURCES/rcl_interfaces/composition_interfaces" \
    --build-base "$SOURCES/build" --install-base "$SOURCES/install" \
    --event-handlers console_direct- console_stderr- \
    --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$(command -v python)" -Wno-dev \
    > "$SOURCES/colcon.log" 2>&1 || { tail -n 30 "$SOURCES/colcon.log" >&2; die "colcon build failed"; }
fi
echo "[launch-from-sources] installing ${PACKAGES[*]} into $SOURCES/site"
rm -rf "$SOURCES/site"
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  --target "$SOURCES/site" -r requirements/launch-check.txt "${PACKAGES[@]/#/$SOURCES/}"

cat > "$SOURCES/env.sh" <<EOF
# Written by scripts/launch_from_sources.sh: source after $ENV_SCRIPT.
. '$SOURCES/install/local_setup.bash'
export PYTHONPATH="$SOURCES/site\${PYTHONPATH:+:\$PYTHONPATH}" PATH="$SOURCES/site/bin:\$PATH"
EOF
set +u
# shellcheck disable=SC1091
source "$SOURCES/env.sh"
set -u
python -c "import launch, launch_ros, ros2launch; print('[launch-from-sources] launch', launch.__file__)"
MCN_REQUIRE_ROS=1 MCN_REQUIRE_LAUNCH=1 python -m pytest test/test_package.py -rs
