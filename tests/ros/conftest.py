"""Fixtures shared by the ROS node tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny ReconVLA saved as a checkpoint directory: (path, its config)."""
    pytest.importorskip("reconvla_core.model.modeling_reconvla")
    from reconvla_core.model import ReconVLA, ReconVLAConfig
    from reconvla_core.model.action_tokenizer import piper_norm_stats

    model = ReconVLA(ReconVLAConfig.from_preset("tiny"))
    model.set_norm_stats(piper_norm_stats())
    path = tmp_path_factory.mktemp("tiny_policy") / "checkpoint"
    model.save_pretrained(path)
    return path, model.config
