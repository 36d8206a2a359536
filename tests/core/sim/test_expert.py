"""The scripted expert grasps by friction and completes a full chain."""

from __future__ import annotations

import numpy as np

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
