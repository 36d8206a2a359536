"""The scripted expert grasps by friction and completes a full chain."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.piper import SOFT_JOINT_LOWER, SOFT_JOINT_UPPER
from reconvla_core.sim.env import PiperCellEnv, SimConfig
from reconvla_core.sim.expert import ScriptedExpert
from reconvla_core.sim.scene import BLOCK_SIZE, sample_layout
from reconvla_core.sim.tasks import make_eval_chains


def test_expert_completes_a_chain_within_limits():
    chain = make_eval_chains(1, seed=0)[0]
    with PiperCellEnv(SimConfig(image_width=32, image_height=24)) as env:
        env.reset(chain=chain)
        expert = ScriptedExpert(env)
        picked = False
        while True:
            action = expert.act()
            # Inside the deployment's soft limits: the safety layer would refuse anything beyond.
            assert np.all(action[:6] >= SOFT_JOINT_LOWER) and np.all(action[:6] <= SOFT_JOINT_UPPER)
            _, info = env.step(action, render=False)
            task = chain.tasks[info["subtask_index"]]
            if info["subtask_success"] and task.family == "pick":
                # Held by friction alone: both fingers touch, no constraint attaches the block
                # (the only constraint is the finger coupling, between two arm links).
                block = env.bodies[f"{task.obj}_block"]
                assert all(env.touching_gripper(f"{task.obj}_block"))
                for index in range(env._client.getNumConstraints()):
                    constraint = env._client.getConstraintInfo(env._client.getConstraintUniqueId(index))
                    assert constraint[0] == env.arm.body == constraint[2] and block not in constraint[:3]
                pos, _ = env.object_pose(f"{task.obj}_block")
                assert pos[2] > BLOCK_SIZE / 2 + 0.05
                picked = True
            if info["done"]:
                break
        assert info["completed"] == 5, f"expert failed subtask {info['subtask_index']} of {chain}"
        assert picked == any(t.family == "pick" for t in chain.tasks)
        assert env.total_steps < 5 * env.config.max_subtask_steps


def test_expert_action_is_a_leader_command(env):
    env.reset(seed=4, task=f"pick {sample_layout(4).block_colours()[0]}")
    action = ScriptedExpert(env).act()
    assert action.shape == (7,) and action.dtype == np.float64
    assert 0.0 <= action[6] <= 0.07


def test_expert_starts_afresh_after_a_reset_and_on_restart(env):
    """One expert per env serves every episode: after env.reset() (or restart()) it acts exactly like
    a new one built then."""
    kept = ScriptedExpert(env)
    env.reset(seed=4)
    for _ in range(8):
        env.step(kept.act(), render=False)
    env.reset(seed=5)
    fresh = ScriptedExpert(env)
    np.testing.assert_array_equal(kept.act(), fresh.act())
    for _ in range(5):
        env.step(fresh.act(), render=False)
    kept.restart()
    fresh = ScriptedExpert(env)
    np.testing.assert_array_equal(kept.act(), fresh.act())


def test_grasp_offset_holds_blocks_off_centre_and_the_carry_still_completes_the_chain():
    """--grasp-offset: the block sits off-centre in the hand along the fingers' width (what a policy's
    grasps do), and the correction over the destination still completes every subtask."""
    from reconvla_core.sim.kinematics import tcp_pose

    def in_hand_offsets(grasp_offset: float) -> tuple[int, list[float]]:
        chain = make_eval_chains(1, seed=3)[0]
        offsets: list[float] = []
        with PiperCellEnv(SimConfig(image_width=32, image_height=24)) as env:
            env.reset(chain=chain)
            expert = ScriptedExpert(env, grasp_offset=grasp_offset)
            logged = -1
            while True:
                _, info = env.step(expert.act(), render=False)
                if info["done"]:
                    return info["completed"], offsets
                block = f"{chain.tasks[env.subtask_index].obj}_block"
                position = env.object_pose(block)[0]
                if env.subtask_index != logged and all(env.touching_gripper(block)) and position[2] > 0.08:
                    tcp = tcp_pose(env.state()[:6])[:3, 3]
                    offsets.append(float(np.linalg.norm(position[:2] - tcp[:2])))
                    logged = env.subtask_index

    completed, centred = in_hand_offsets(0.0)
    completed_off, off_centre = in_hand_offsets(0.015)
    assert completed == completed_off == 5
    assert max(centred) < 0.003 and max(off_centre) > 0.006
    with pytest.raises(ValueError, match="grasp_offset"):
        ScriptedExpert(None, grasp_offset=0.05)  # type: ignore[arg-type]  # refused before the env is read
