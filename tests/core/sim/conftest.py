"""Fixtures for the simulation tests: small images keep every test fast on 2 cores."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def small_config():
    from reconvla_core.sim.env import SimConfig

    return SimConfig(image_width=64, image_height=48)


@pytest.fixture
def env(small_config):
    from reconvla_core.sim.env import PiperCellEnv

    environment = PiperCellEnv(small_config)
    yield environment
    environment.close()
