"""Success detectors: pure pose checks, then the same checks on objects placed in the physics scene."""

from __future__ import annotations

import numpy as np

from reconvla_core.sim import success
from reconvla_core.sim.scene import BLOCK_SIZE, BOWL_FLOOR

H = BLOCK_SIZE / 2


def test_lifted():
    assert success.lifted(np.array([0.3, 0.0, H + 0.06]))
    assert not success.lifted(np.array([0.3, 0.0, H]))
    assert not success.lifted(np.array([0.3, 0.0, H + 0.04]))


def test_in_bowl():
    bowl = np.array([0.3, 0.1, 0.0])
    inside = np.array([0.31, 0.1, BOWL_FLOOR + H])
    assert success.in_bowl(inside, bowl, touching_gripper=False)
    assert not success.in_bowl(inside, bowl, touching_gripper=True)  # still held
    assert not success.in_bowl(inside, bowl, touching_gripper=False, speed=0.3)  # still falling
    assert not success.in_bowl(np.array([0.4, 0.1, H]), bowl, touching_gripper=False)  # beside it
    assert not success.in_bowl(np.array([0.3, 0.1, 0.2]), bowl, touching_gripper=False)  # above it


def test_on_block():
    base = np.array([0.3, 0.0, H])
    assert success.on_block(np.array([0.305, 0.0, H + BLOCK_SIZE]), base, touching_gripper=False)
    assert not success.on_block(np.array([0.305, 0.0, H + BLOCK_SIZE]), base, touching_gripper=True)
    assert not success.on_block(np.array([0.35, 0.0, H]), base, touching_gripper=False)  # next to it
    assert not success.on_block(np.array([0.3, 0.0, H + 0.1]), base, touching_gripper=False)  # hovering
    lifted_base = base + [0, 0, 0.05]
    assert not success.on_block(lifted_base + [0, 0, BLOCK_SIZE], lifted_base, touching_gripper=False)


def _settle(env, steps=3):
    for _ in range(steps):
        env.advance()


def _move(env, name, xyz):
    env._client.resetBasePositionAndOrientation(env.bodies[name], list(xyz), [0, 0, 0, 1])


def test_env_detects_place_and_stack_from_poses(env):
    layout_seed = 2
    env.reset(seed=layout_seed)
    blocks, bowls = env.layout.block_colours(), env.layout.bowl_colours()
    obj, other, bowl = blocks[0], blocks[1], bowls[0]
    bowl_pos, _ = env.object_pose(f"{bowl}_bowl")

    env.reset(seed=layout_seed, task=f"place {obj} {bowl}")
    assert not env.subtask_success()  # the block starts on the table
    _move(env, f"{obj}_block", bowl_pos + [0, 0, BOWL_FLOOR + H + 0.002])
    _settle(env)
    assert env.subtask_success()

    env.reset(seed=layout_seed, task=f"stack {obj} {other}")
    assert not env.subtask_success()
    base_pos, _ = env.object_pose(f"{other}_block")
    _move(env, f"{obj}_block", base_pos + [0, 0, BLOCK_SIZE + 0.001])
    _settle(env)
    assert env.subtask_success()

    env.reset(seed=layout_seed, task=f"pick {obj}")
    assert not env.subtask_success()
    _move(env, f"{other}_block", base_pos + [0, 0, 0.1])  # lifting another block is no success
    assert not env.subtask_success()
