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

clean:
	rm -rf build install log mcn_env.sh
