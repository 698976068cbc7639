# Entry points. `make test` and `make demo` set everything up themselves (scripts/setup.sh).
SHELL := /bin/bash
ENV := source ./mcn_env.sh &&

.PHONY: setup test lint check demo clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(ENV) ruff check . && ruff format --check . && mypy -p mcn_ros -p mcn_training

# pytest exits 5 when it collects nothing: that is a failure here too.
test: lint
	$(ENV) MCN_REQUIRE_ROS=1 python -m pytest

# The main job: bag from synthetic validation images -> node -> replay (lockstep, then at rate) -> report.
# Optional: WEIGHTS=file.safetensors BAG=rosbag2_folder, TRAIN=1 (retrain the demo weights first), RECORD=1
# (bench/results/replay_synthetic.json); see scripts/demo.sh.
demo: setup
	$(ENV) WEIGHTS="$(WEIGHTS)" BAG="$(BAG)" TRAIN="$(TRAIN)" RECORD="$(RECORD)" bash scripts/demo.sh

clean:
	rm -rf build install log mcn_env.sh
