"""Policies: random within limits and seeded, expert bound to the env, checkpoint loading errors."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.piper import GRIPPER_MAX, JOINT_LOWER, JOINT_UPPER
from reconvla_core.policy import CheckpointPolicy, ExpertPolicy, RandomPolicy, check_chunk


def test_random_policy_is_seeded_and_within_limits():
    a, b = RandomPolicy(seed=1, chunk_size=4), RandomPolicy(seed=1, chunk_size=4)
    chunk = a.infer({})
    assert chunk.shape == (4, 7) and np.array_equal(chunk, b.infer({}))
    assert np.all(chunk[:, :6] >= JOINT_LOWER) and np.all(chunk[:, :6] <= JOINT_UPPER)
    assert np.all((chunk[:, 6] >= 0) & (chunk[:, 6] <= GRIPPER_MAX))


def test_expert_policy_returns_the_env_expert_command(env):
    env.reset(seed=2)
    chunk = ExpertPolicy(env).infer(env.observe(render=False))
    assert chunk.shape == (1, 7)


def test_check_chunk_and_checkpoint_errors(tmp_path):
    assert check_chunk(np.zeros(7)).shape == (1, 7)
    with pytest.raises(ValueError, match=r"\(K, 7\)"):
        check_chunk(np.zeros((2, 6)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CheckpointPolicy(tmp_path / "nope")
    with pytest.raises(ValueError, match="dtype"):
        CheckpointPolicy(tmp_path, dtype="int8")
