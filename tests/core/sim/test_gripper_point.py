"""Gripper points: where the tool point appears in the base image, as the twin renders it (the
gripper input of `reconvla study privileged --inputs box+gripper|centre+gripper`)."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.sim import camera as cam


def test_gripper_points_are_the_rendered_tcp_in_the_base_image():
    from reconvla_core.sim.env import PiperCellEnv, SimConfig
    from reconvla_core.sim.robot import JOINT_LOWER, JOINT_UPPER

    rng = np.random.default_rng(0)
    with PiperCellEnv(SimConfig(image_width=64, image_height=48)) as env:
        env.reset(seed=0)
        states, expected = [], []
        for _ in range(20):
            q = rng.uniform(0.5 * np.asarray(JOINT_LOWER), 0.5 * np.asarray(JOINT_UPPER))
            env.arm.reset(q, 0.05)
            tcp, _ = env.tcp_pose()  # PyBullet's link pose, the camera the twin renders with
            expected.append(cam.project(tcp[None], env.base_view, env.base_proj)[0])
            states.append(np.concatenate([q, [0.05]]))
    points = cam.gripper_points(np.array(states), 64, 48)
    expected = np.array(expected)
    inside = np.all((expected >= 0) & (expected <= 1), axis=1)
    assert inside.sum() >= 5 and (~inside).sum() >= 1  # both cases are exercised
    np.testing.assert_allclose(points[inside, :2], expected[inside], atol=1e-5)
    np.testing.assert_array_equal(points[:, 2], inside.astype(float))
    assert np.all((points[:, :2] >= 0) & (points[:, :2] <= 1))  # an outside point is clipped to the border
    with pytest.raises(ValueError, match="joint angles"):
        cam.gripper_points(np.array([[0.0, np.nan, 0, 0, 0, 0, 0]]), 64, 48)
