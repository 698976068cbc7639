# Entry points. `make test` and `make demo` set everything up themselves (scripts/setup.sh).
SHELL := /bin/bash
ENV := source ./mcn_env.sh &&
# requirements/dev.txt installs onnx and onnxruntime on Python >= 3.11: there their absence fails the tests.
REQUIRE_ONNX = $$(python -c 'import sys; print(int(sys.version_info >= (3, 11)))')

.PHONY: setup test lint check-distro-pins test-jazzy test-launch demo bench bench-gpu clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(ENV) ruff check . && ruff format --check . && mypy -p mcn_ros -p mcn_training && mypy bench/*.py

# Stage 1: the whole suite on ROS 2 Kilted wheels + numpy 2. Stage 2 (test-jazzy): the ROS and model-runtime
# tests again on ROS 2 Jazzy wheels (rclpy 7) + numpy 1.26 with the distro pins. pytest exits 5 when it
# collects nothing: that is a failure here too.
test: lint check-distro-pins
	$(ENV) MCN_REQUIRE_ROS=1 MCN_REQUIRE_ONNX=$(REQUIRE_ONNX) python -m pytest
	@$(MAKE) --no-print-directory test-jazzy

# requirements/distro.txt resolves for Humble (Python 3.10, numpy 1.21) and Jazzy / Kilted (3.12, numpy 1.26).
check-distro-pins: setup
	$(ENV) bash scripts/check_distro_pins.sh

# What rclpy 7 and numpy 1.x can break: messages, the node over DDS, the launch layout, replay, the model runtime.
JAZZY_TESTS := test/test_messages.py test/test_node.py test/test_package.py test/test_parameters.py \
	test/test_replay.py test/test_images.py test/test_model_predictor.py test/test_model_preprocess.py \
	test/test_model_decode.py test/test_evaluation.py test/test_bag.py test/test_launch_args.py \
	test/test_frames.py test/test_cameras.py test/test_fastdds.py test/test_model_precision.py \
	test/test_node_threads.py
test-jazzy:
	@bash scripts/test_jazzy.sh $(JAZZY_TESTS)

# The launch tests (test/test_package.py) on launch, launch_ros and ros2cli built from source checkouts, which
# PyPI has no wheels of: SOURCES=folder holding github.com/ros2/{launch,launch_ros,ros2cli,rcl_interfaces} at the
# distro's branch; ENV_SCRIPT=mcn_env_jazzy.sh for the Jazzy wheels (after make test-jazzy). Not in make test.
test-launch:
	@[ -n "$(SOURCES)" ] || { echo "make test-launch SOURCES=<folder of checkouts>: see scripts/launch_from_sources.sh"; exit 2; }
	@$(MAKE) --no-print-directory setup
	bash scripts/launch_from_sources.sh "$(SOURCES)" $(ENV_SCRIPT)

# The main job: bag from synthetic validation images -> node -> replay (lockstep, then at rate) -> report.
# Optional: WEIGHTS=file.safetensors BAG=rosbag2_folder, TRAIN=1 (retrain the demo weights first), RECORD=1
# (bench/results/replay_synthetic.json); see scripts/demo.sh.
demo: setup
	$(ENV) WEIGHTS="$(WEIGHTS)" BAG="$(BAG)" TRAIN="$(TRAIN)" RECORD="$(RECORD)" bash scripts/demo.sh

# CPU speed benchmarks (bench/results/model_cpu.*, e2e_cpu.*, node_cpu.*; not with QUICK: int8_onnxruntime.*
# and node_cpu_int8.* on a CPU with VNNI or AMX, precision_cpu_amx.* on one with AMX bf16, precision_cpu.* on
# one with AVX-512 BF16 alone, node_cpu_bf16.* on either, decode_share.*, and last the README's headline table
# from all the records, bench/summary.py): installs the benchmark-only packages
# (requirements/bench.txt: ultralytics for the YOLO peers, onnxruntime + onnx) into .venv without their
# dependency resolution (see that file), then runs the scripts. QUICK=1: a short check of the scripts, written
# to a temporary folder. Run it on an otherwise idle machine; THREADS sets torch / ONNX Runtime threads.
THREADS ?= 2
bench: setup
	$(ENV) pip install -q --no-deps -r requirements/bench.txt
	$(ENV) python bench/model_cpu.py --threads $(THREADS) $(if $(QUICK),--quick,)
	$(ENV) python bench/e2e_cpu.py --threads $(THREADS) $(if $(QUICK),--quick,)
	$(if $(QUICK),,if grep -qwE 'avx512_vnni|avx_vnni|amx_int8' /proc/cpuinfo; then \
		$(ENV) python bench/int8_onnxruntime.py; \
	else echo "[bench] this CPU has no VNNI/AMX: int8_onnxruntime skipped (precision int8 runs fp32 here)"; fi)
	$(if $(QUICK),,if grep -qw amx_bf16 /proc/cpuinfo; then \
		$(ENV) python bench/precision_cpu.py --threads $(THREADS) --name precision_cpu_amx; \
	elif grep -qw avx512_bf16 /proc/cpuinfo; then $(ENV) python bench/precision_cpu.py --threads $(THREADS); \
	else echo "[bench] this CPU has no native bf16: precision_cpu skipped (precision bf16 runs fp32 here)"; fi)
	$(ENV) python bench/node_cpu.py $(if $(QUICK),--quick,)
	$(if $(QUICK),,if grep -qwE 'avx512_vnni|avx_vnni|amx_int8' /proc/cpuinfo; then \
		$(ENV) python bench/node_cpu.py --int8 --name node_cpu_int8; fi)
	$(if $(QUICK),,if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then \
		$(ENV) python bench/node_cpu.py --bf16 --name node_cpu_bf16; fi)
	$(if $(QUICK),,$(ENV) python bench/decode_share.py --threads $(THREADS))
	$(if $(QUICK),,$(ENV) python bench/summary.py)

# On a CUDA GPU: the model table (bench/results/model_gpu.*: fp32 / fp16 / bf16, batch 1 and 6, the demo
# weights' accuracy at each precision), then (not with QUICK) eager forward against CUDA graphs and the two
# peak searches (gpu_overheads.*), and predict step by step with and without CUDA graphs
# (decode_share_gpu.*); exits 2 without CUDA.
bench-gpu: setup
	$(ENV) pip install -q --no-deps -r requirements/bench.txt
	$(ENV) python bench/model_gpu.py $(if $(QUICK),--quick,)
	$(if $(QUICK),,$(ENV) python bench/gpu_overheads.py)
	$(if $(QUICK),,$(ENV) python bench/decode_share.py --device cuda --precisions fp32 fp16 --cuda-graphs)
	$(if $(QUICK),,$(ENV) python bench/summary.py)

clean:
	rm -rf build install log mcn_env.sh build-jazzy install-jazzy mcn_env_jazzy.sh
