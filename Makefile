# Entry points. `make test` and `make demo` set everything up themselves (scripts/setup.sh).
SHELL := /bin/bash
ENV := source ./mcn_env.sh &&

.PHONY: setup test lint check demo clean

setup:
	@bash scripts/setup.sh

# mypy finds mcn_training (the training/ directory) through a link in .typings/.
lint: setup
	@mkdir -p .typings && ln -sfn ../training .typings/mcn_training
	$(ENV) ruff check . && ruff format --check . && MYPYPATH=.typings mypy -p mcn_ros -p mcn_training

# pytest exits 5 when it collects nothing: that is a failure here too.
test: lint
	$(ENV) MCN_REQUIRE_ROS=1 python -m pytest

clean:
	rm -rf build install log mcn_env.sh
