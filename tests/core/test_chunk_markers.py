"""Chunk markers (what RViz draws of the chunk arm_command executes), without ROS."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.piper import GRIPPER_MAX, JOINT_LOWER, JOINT_NAMES, JOINT_UPPER
from reconvla_core.runtime.chunk_markers import (
    CLOSED_RGBA,
    END_RGBA,
    GRIPPER_NAMESPACE,
    OPEN_RGBA,
    PATH_NAMESPACE,
    REJECTED_PATH_NAMESPACE,
    REJECTED_RGBA,
    REJECTED_STEPS_NAMESPACE,
    START_RGBA,
    VIOLATION_RGBA,
    executed_chunk_markers,
    rejected_chunk_markers,
)
from reconvla_core.runtime.safety import SafetyConfig, SafetyFilter
from reconvla_core.sim.description import piper_description_urdf


def _chunk(rng: np.random.Generator, steps: int = 12) -> np.ndarray:
    start, end = (rng.uniform(JOINT_LOWER, JOINT_UPPER) * 0.5 for _ in range(2))
    joints = np.linspace(start, end, steps)
    gripper = np.linspace(GRIPPER_MAX, 0.0, steps)[:, None]
    return np.hstack([joints, gripper])


def test_path_points_are_the_tool_centre_of_each_action_in_the_urdf_to_1mm():
    # Independent of kinematics.py: chain the URDF RViz shows (the test's own parser).
    from test_description import UrdfTree

    tree = UrdfTree(piper_description_urdf())
    rng = np.random.default_rng(3)
    actions = _chunk(rng)
    path, gripper = executed_chunk_markers(actions)
    assert path.namespace == PATH_NAMESPACE and path.kind == "line_strip"
    assert gripper.namespace == GRIPPER_NAMESPACE and gripper.kind == "sphere_list"
    for row, point in zip(actions, path.points):
        expected = tree.pose("tcp", dict(zip(JOINT_NAMES, row[:6])))[:3, 3]
        assert np.abs(point - expected).max() < 1e-3
    assert np.array_equal(gripper.points, path.points)


def test_path_colours_run_from_now_to_the_end_and_gripper_colours_follow_the_opening():
    actions = _chunk(np.random.default_rng(4))
    path, gripper = executed_chunk_markers(actions)
    assert np.allclose(path.colors[0], START_RGBA) and np.allclose(path.colors[-1], END_RGBA)
    assert np.all(np.diff(path.colors[:, 0]) > 0)  # red rises step by step: time order is visible
    assert np.allclose(gripper.colors[0], OPEN_RGBA) and np.allclose(gripper.colors[-1], CLOSED_RGBA)
    assert path.lifetime_s == 0.0


def test_rejected_chunk_draws_the_steps_beyond_the_limits_in_red():
    safety = SafetyFilter(SafetyConfig())
    actions = _chunk(np.random.default_rng(5), steps=8)
    actions[5:, 0] = JOINT_UPPER[0] + 0.5  # the end of the chunk swings joint 1 past its limit
    mask = safety.violating_steps(actions)
    assert safety.limit_violation(actions) is not None
    assert mask.tolist() == [False] * 5 + [True] * 3
    path, steps = rejected_chunk_markers(actions, mask)
    assert path.namespace == REJECTED_PATH_NAMESPACE and steps.namespace == REJECTED_STEPS_NAMESPACE
    assert np.allclose(path.colors[:5], REJECTED_RGBA) and np.allclose(path.colors[5:], VIOLATION_RGBA)
    assert np.array_equal(steps.points, path.points[5:])
    assert path.lifetime_s > 0 and steps.lifetime_s > 0  # fades, the executing path stays
    assert not safety.violating_steps(actions[:5]).any() and safety.limit_violation(actions[:5]) is None


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="actions must be"):
        executed_chunk_markers(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="rejected_steps"):
        rejected_chunk_markers(np.zeros((3, 7)), np.zeros(2, dtype=bool))
