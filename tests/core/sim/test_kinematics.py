"""The generated URDF is the DH model: PyBullet's link frames equal our forward kinematics."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from reconvla_core.piper import GRIPPER_MAX, JOINT_LOWER, JOINT_NAMES, JOINT_UPPER, SOFT_JOINT_LOWER, SOFT_JOINT_UPPER
from reconvla_core.sim.kinematics import (
    LOWER,
    UPPER,
    dh_transform,
    forward_frames,
    solve_ik,
    tcp_pose,
    top_down_rotation,
)
from reconvla_core.sim.expert import IK_SEEDS, plan_ik
from reconvla_core.sim.robot import piper_urdf


def test_urdf_declares_piper_limits():
    root = ET.fromstring(piper_urdf())
    joints = {j.get("name"): j for j in root.iter("joint")}
    for name, lower, upper in zip(JOINT_NAMES, JOINT_LOWER, JOINT_UPPER):
        limit = joints[name].find("limit")
        assert float(limit.get("lower")) == lower and float(limit.get("upper")) == upper
        assert float(limit.get("velocity")) == 3.0
    finger = joints["finger_left_joint"].find("limit")
    assert float(finger.get("upper")) * 2 == GRIPPER_MAX  # two fingers, symmetric opening
    assert "mesh" not in piper_urdf()  # simple shapes only


def test_dh_zero_pose_matches_published_table():
    # Frame 4 origin at q = 0: hand-computed from the DH table in reconvla_core/piper.py.
    frames = forward_frames(np.zeros(6))
    assert np.allclose(frames[0][:3, 3], [0, 0, 0.123])
    manual = np.eye(4)
    for alpha, a, theta, d in zip(
        (0, -np.pi / 2, 0, np.pi / 2), (0, 0, 0.28503, -0.02198),
        (0, np.radians(-172.22), np.radians(-102.78), 0), (0.123, 0, 0, 0.25075)
    ):
        manual = manual @ dh_transform(alpha, a, theta, d)
    assert np.allclose(frames[3], manual)


def test_pybullet_links_follow_dh(env):
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.uniform(LOWER, UPPER)
        env.arm.reset(q, 0.03)
        pos, rot = env.tcp_pose()
        expected = tcp_pose(q)
        assert np.allclose(pos, expected[:3, 3], atol=1e-5)
        assert np.allclose(rot, expected[:3, :3], atol=1e-5)
        assert abs(env.state()[6] - 0.03) < 1e-9


def test_ik_reaches_top_down_grasps_within_limits():
    seed = np.array([0.0, 1.2, -1.2, 0.0, 0.9, 0.0])
    for target in ([0.25, 0.0, 0.02], [0.3, 0.15, 0.05], [0.2, -0.2, 0.115]):
        q, err = solve_ik(np.array(target), top_down_rotation(np.pi), seed)
        assert err < 1e-3
        assert np.all(q >= LOWER) and np.all(q <= UPPER)
        assert np.allclose(tcp_pose(q)[:3, 3], target, atol=1e-3)
        assert np.allclose(tcp_pose(q)[:3, 2], [0, 0, -1], atol=1e-2)  # tool points down


def test_expert_ik_stays_inside_the_soft_limits():
    """Far out at travel height a top-down tool needs joint5 beyond its soft limit (1.17 rad): the
    experts' IK stays inside it and gives up a few millimetres there instead."""
    target = np.array([0.38, 0.0, 0.115])
    free, err = solve_ik(target, top_down_rotation(np.pi), np.array(IK_SEEDS[0]), iterations=150)
    assert err < 1e-3 and free[4] > SOFT_JOINT_UPPER[4]
    q, _ = plan_ik(target, np.pi, np.array(IK_SEEDS[0]), iterations=150)
    assert np.all(q >= SOFT_JOINT_LOWER) and np.all(q <= SOFT_JOINT_UPPER)
    assert q[4] == pytest.approx(SOFT_JOINT_UPPER[4])
    assert np.linalg.norm(tcp_pose(q)[:3, 3] - target) < 0.005


def test_a_joint_on_its_limit_does_not_stall_the_solve():
    """An arm held at joint5's soft limit far out (where a perturbation left the relabelling expert):
    a 1 cm step towards the base is solved with the other joints. Clipped without locking, the solve
    stalled there (8 mm short) and the expert never moved again."""
    q0 = np.array([-0.79, 1.902, -1.501, 0.0, 1.17, -0.451])
    pose = tcp_pose(q0)
    yaw = float(np.arctan2(pose[1, 0], pose[0, 0]))
    inward = -pose[:2, 3] / np.linalg.norm(pose[:2, 3])
    target = pose[:3, 3] + 0.01 * np.array([*inward, 0.0])
    q, _ = plan_ik(target, yaw, q0, iterations=60)
    assert q[4] <= SOFT_JOINT_UPPER[4]
    assert np.linalg.norm(tcp_pose(q)[:3, 3] - target) < 0.003
