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
# It builds composition_interfaces (launch_ros imports it) with colcon into SOURCES/install-<env>, installs the
# pure Python packages and osrf_pycommon (requirements/launch-check.txt) into SOURCES/site-<env>, writes
# SOURCES/env-<env>.sh (source it after ENV_SCRIPT to use `ros2 launch` by hand; <env> is mcn_env or
# mcn_env_jazzy), prints the versions installed and runs the tests with MCN_REQUIRE_LAUNCH=1, so that a missing
# piece fails instead of skipping. With a sourced ROS 2 distro this is not needed: `make test`
# runs those tests there.
set -euo pipefail
die() { echo "[launch-from-sources] $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: scripts/launch_from_sources.sh SOURCES [ENV_SCRIPT]"
# Both resolved before moving to the repository root, so that relative paths mean what the caller meant.
SOURCES="$(cd -- "$1" >/dev/null 2>&1 && pwd)" || die "$1 is not a folder"
ENV_SCRIPT="${2:-mcn_env.sh}"
[ -f "$ENV_SCRIPT" ] || ENV_SCRIPT="$(dirname "${BASH_SOURCE[0]}")/../$ENV_SCRIPT"
[ -f "$ENV_SCRIPT" ] || die "${2:-mcn_env.sh} is missing: run make setup (or make test-jazzy for mcn_env_jazzy.sh)"
ENV_SCRIPT="$(cd -- "$(dirname "$ENV_SCRIPT")" >/dev/null && pwd)/$(basename "$ENV_SCRIPT")"
cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null
[ -z "${ROS_DISTRO:-}" ] || die "ROS_DISTRO=$ROS_DISTRO is sourced: its launch tools are used by make test already"
for repo in launch launch_ros ros2cli rcl_interfaces; do
  [ -d "$SOURCES/$repo" ] || die "$SOURCES/$repo is missing: clone github.com/ros2/$repo there (the distro's branch)"
done

set +u  # the generated setup scripts read unset variables
# shellcheck disable=SC1090
source "$ENV_SCRIPT"
set -u
PACKAGES=(launch/launch launch/launch_xml launch/launch_yaml launch_ros/launch_ros launch_ros/ros2launch
          ros2cli/ros2cli ros2cli/ros2pkg)

# One build per environment script: the message bindings are built against that environment's ROS. Always
# run: colcon builds incrementally, so a rerun costs seconds, and a failed build is retried.
BUILD_NAME="$(basename "$ENV_SCRIPT" .sh)"
INSTALL="$SOURCES/install-$BUILD_NAME"
echo "[launch-from-sources] building composition_interfaces with colcon into $INSTALL"
colcon --log-base "$SOURCES/log-$BUILD_NAME" build --base-paths "$SOURCES/rcl_interfaces/composition_interfaces" \
  --build-base "$SOURCES/build-$BUILD_NAME" --install-base "$INSTALL" \
  --event-handlers console_direct- console_stderr- \
  --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$(command -v python)" -Wno-dev \
  > "$SOURCES/colcon-$BUILD_NAME.log" 2>&1 \
  || { tail -n 30 "$SOURCES/colcon-$BUILD_NAME.log" >&2; die "colcon build failed"; }

SITE="$SOURCES/site-$BUILD_NAME"
echo "[launch-from-sources] installing ${PACKAGES[*]} into $SITE"
rm -rf "$SITE"
clean_checkouts() {  # what pip's builds leave in the checkouts (build/, *.egg-info)
  for package in "${PACKAGES[@]}"; do
    rm -rf "${SOURCES:?}/$package/build" "$SOURCES/$package/"*.egg-info
  done
}
clean_checkouts  # leftovers of an earlier build (another branch) must not be installed
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  --target "$SITE" -r requirements/launch-check.txt "${PACKAGES[@]/#/"$SOURCES"/}"
clean_checkouts  # and the checkouts are left as they were

{
  echo "# Written by scripts/launch_from_sources.sh: source after $BUILD_NAME.sh."
  printf '. %q\n' "$INSTALL/local_setup.bash"
  printf 'export PYTHONPATH=%q"${PYTHONPATH:+:$PYTHONPATH}" PATH=%q":$PATH"\n' "$SITE" "$SITE/bin"
} > "$SOURCES/env-$BUILD_NAME.sh"
set +u
# shellcheck disable=SC1090
source "$SOURCES/env-$BUILD_NAME.sh"
set -u
python - <<'PY'
from importlib.metadata import version
print("[launch-from-sources] " + ", ".join(
    f"{name} {version(name)}" for name in ("launch", "launch_ros", "ros2cli", "ros2launch")))
PY
MCN_REQUIRE_ROS=1 MCN_REQUIRE_LAUNCH=1 python -m pytest test/test_package.py -rs
