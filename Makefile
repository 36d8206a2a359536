# ReconVLA-ROS: `make demo` (the main job) and `make test` (the test suite) set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast colcon clean help

help:
	@echo "make demo   - set up, then run the whole journey in the simulation twin (ARGS=--quick for a smoke run)"
	@echo "make test   - set up, then run the whole test suite"
	@echo "make setup  - create .venv and install the pinned dependencies (idempotent)"
	@echo "make colcon - build the ROS 2 workspace in ros2_ws/"

# Re-install only when the lock file or a package definition changed.
$(STAMP): requirements.lock src/reconvla_core/pyproject.toml src/reconvla_ros/setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e src/reconvla_core -e src/reconvla_ros
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/reconvla demo $(ARGS)

test: setup
	bash scripts/run_tests.sh $(PYTEST_ARGS)

colcon: setup
	cd ros2_ws && ../$(BIN)/colcon build --symlink-install

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log .pytest_cache
