# Entry points. `make test` and `make demo` set everything up themselves (scripts/setup.sh).
SHELL := /bin/bash
ENV := source ./mcn_env.sh &&

.PHONY: setup test lint check demo bench clean

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

# CPU speed benchmarks (bench/results/model_cpu.*, e2e_cpu.*): installs the benchmark-only packages
# (requirements/bench.txt: ultralytics for the YOLO peers, onnxruntime + onnx) into .venv without their
# dependency resolution (see that file), then runs the scripts. QUICK=1: a short check of the scripts, written
# to a temporary folder. Run it on an otherwise idle machine; THREADS sets torch / ONNX Runtime threads.
THREADS ?= 2
bench: setup
	$(ENV) pip install -q --no-deps -r requirements/bench.txt
	$(ENV) python bench/model_cpu.py --threads $(THREADS) $(if $(QUICK),--quick,)
	$(ENV) python bench/e2e_cpu.py --threads $(THREADS) $(if $(QUICK),--quick,)

clean:
	rm -rf build install log mcn_env.sh
