"""Fixtures for the model tests: tiny models built once per module, synthetic observations."""

from __future__ import annotations

import os

import pytest
from model_helpers import build_tiny, make_observation

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def norm_stats() -> dict:
    from reconvla_core.model.action_tokenizer import piper_norm_stats

    return piper_norm_stats()


@pytest.fixture
def observation() -> dict:
    return make_observation(0)


@pytest.fixture(scope="module")
def tiny_model(norm_stats):
    """A random tiny model with the gaze reconstruction branch (shared: do not train it in tests)."""
    return build_tiny(norm_stats, recon_target="gaze")
