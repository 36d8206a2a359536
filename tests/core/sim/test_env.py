"""Env API: determinism, joint limits, gaze box, argument errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from reconvla_core.piper import GRIPPER_MAX, JOINT_LOWER, JOINT_UPPER
from reconvla_core.sim.env import PiperCellEnv, SimConfig
from reconvla_core.sim.expert import ScriptedExpert
from reconvla_core.sim.scene import COLOURS
from reconvla_core.sim.tasks import make_eval_chains


def _hash(obs):
    digest = hashlib.sha256()
    for key in ("base_image", "wrist_image"):
        digest.update(obs[key].tobytes())
    digest.update(np.asarray(obs["state"]).tobytes())
    return digest.hexdigest()


def _expert_run(config, seed, steps):
    with PiperCellEnv(config) as env:
        first = env.reset(seed=seed)
        expert = ScriptedExpert(env)
        actions = []
        for _ in range(steps):
            action = expert.act()
            actions.append(action)
            env.step(action, render=False)
        return _hash(first), np.array(actions), env.state()


def test_same_seed_same_first_frame_and_expert_trajectory(small_config):
    h1, a1, s1 = _expert_run(small_config, 7, 25)
    h2, a2, s2 = _expert_run(small_config, 7, 25)
    h3, a3, _ = _expert_run(small_config, 8, 25)
    assert h1 == h2 and np.array_equal(a1, a2) and np.array_equal(s1, s2)
    assert h1 != h3 and not np.array_equal(a1, a3)


def test_observation_layout(env, small_config):
    obs = env.reset(seed=0)
    assert set(obs) >= {"base_image", "wrist_image", "state", "instruction"}
    for key in ("base_image", "wrist_image"):
        assert obs[key].shape == (small_config.image_height, small_config.image_width, 3)
        assert obs[key].dtype == np.uint8 and obs[key].std() > 5  # a real picture, not blank
    assert obs["state"].shape == (7,) and abs(obs["state"][6] - GRIPPER_MAX) < 1e-6
    assert obs["instruction"] == env.chain.tasks[0].instruction
    _, info = env.step(env.last_command)
    assert set(info) >= {"subtask_success", "subtask_index", "done", "gaze_box"}
    assert info["subtask_index"] == 0 and not info["done"]


def test_joint_limits_and_speed_never_exceeded(small_config):
    from reconvla_core.policy import RandomPolicy

    config = SimConfig(image_width=32, image_height=24, clip_actions=True)
    policy = RandomPolicy(seed=3)
    with PiperCellEnv(config) as env:
        env.reset(seed=1)
        previous = env.state()
        for _ in range(40):
            obs, _ = env.step(policy.infer({}).actions[0], render=False)
            q = obs["state"]
            assert np.all(q[:6] >= np.array(JOINT_LOWER) - 1e-3) and np.all(q[:6] <= np.array(JOINT_UPPER) + 1e-3)
            assert -1e-3 <= q[6] <= GRIPPER_MAX + 1e-3
            # 3 rad/s at 10 Hz: at most 0.3 rad per control step (+ tracking slack).
            assert np.max(np.abs(q[:6] - previous[:6])) <= 0.3 + 0.02
            previous = q
        # Large commanded jumps (clamped to limits) are still followed at the speed limit.
        env.apply_command(np.array(JOINT_UPPER + (GRIPPER_MAX,)) + 10.0)
        assert np.allclose(env.last_command[:6], JOINT_UPPER)


def _segmentation(env, width, height):
    """Body-id mask of the base camera (PyBullet's own renderer), to check the projected box."""
    import pybullet as p

    _, _, _, _, seg = env._client.getCameraImage(
        width, height, viewMatrix=env.base_view.T.reshape(-1).tolist(),
        projectionMatrix=env.base_proj.T.reshape(-1).tolist(), renderer=p.ER_TINY_RENDERER,
    )
    return np.asarray(seg).reshape(height, width)


def test_gaze_box_inside_image_and_around_target():
    width, height = 160, 120
    with PiperCellEnv(SimConfig(image_width=width, image_height=height)) as env:
        for seed in (0, 3):
            env.reset(seed=seed)
            box = env.gaze_box()
            assert np.all(box >= 0) and np.all(box <= 1) and box[0] < box[2] and box[1] < box[3]
            assert (box[2] - box[0]) < 0.3 and (box[3] - box[1]) < 0.3  # a block, not the whole image
            ys, xs = np.nonzero(_segmentation(env, width, height) == env.bodies[env.target_object])
            assert len(xs) >= 6, "the target block is visible"
            u, v = (xs + 0.5) / width, (ys + 0.5) / height
            slack = 1.5 / width
            assert np.all((u >= box[0] - slack) & (u <= box[2] + slack) & (v >= box[1] - slack) & (v <= box[3] + slack))
            # ... and the box is tight: the visible pixels span most of it.
            assert (u.max() - u.min()) > 0.5 * (box[2] - box[0]) and (v.max() - v.min()) > 0.4 * (box[3] - box[1])
            # The box follows the object: a lifted block moves its box up the image.
            name = env.target_object
            pos, _ = env.object_pose(name)
            env._client.resetBasePositionAndOrientation(env.bodies[name], list(pos + [0, 0, 0.1]), [0, 0, 0, 1])
            assert env.gaze_box()[1] < box[1]


def test_bad_arguments_raise_clear_errors(env):
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(7))
    env.reset(seed=0)
    blocks = env.layout.block_colours()
    missing = next(c for c in COLOURS if c not in blocks)
    with pytest.raises(ValueError, match=f"no {missing} block in scene 0"):
        env.reset(seed=0, task=f"pick {missing}")
    with pytest.raises(ValueError, match="unknown task"):
        env.reset(seed=0, task="juggle the red block")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        env.reset(seed=-1)
    with pytest.raises(ValueError, match="either chain= or task="):
        env.reset(chain=make_eval_chains(1)[0], task=f"pick {blocks[0]}")
    env.reset(seed=0)
    ok = env.last_command
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite values for joint3"):
        env.step(np.where(np.arange(7) == 2, np.nan, ok))
    with pytest.raises(ValueError, match=r"joint2=5.0000 rad is outside its limits \[0.000, 3.140\]"):
        env.step(np.where(np.arange(7) == 1, 5.0, ok))
    with pytest.raises(ValueError, match="gripper=0.2000 m is outside"):
        env.step(np.where(np.arange(7) == 6, 0.2, ok))
    # A tiny overshoot (rounding in a de-normalised policy output) is clamped, not refused.
    command = env.apply_command(np.where(np.arange(7) == 6, GRIPPER_MAX + 0.001, ok))
    assert command[6] == GRIPPER_MAX
    with pytest.raises(ValueError, match="image_width"):
        SimConfig(image_width=0)


def test_chain_advances_and_ends(small_config):
    chain = make_eval_chains(1, seed=0)[0]
    config = SimConfig(image_width=32, image_height=24, subtask_time_limit_s=0.5)
    with PiperCellEnv(config) as env:
        env.reset(chain=chain)
        info = {}
        for _ in range(5):
            _, info = env.step(env.last_command, render=False)
        assert info["done"] and info["timeout"] and info["completed"] == 0
        with pytest.raises(RuntimeError, match="done"):
            env.step(env.last_command)


def test_gaze_follows_the_block_then_its_destination():
    """The gaze box is on the block until both fingers hold it, then on where the carry goes."""
    from reconvla_core.sim.expert import ScriptedExpert
    from reconvla_core.sim.tasks import make_eval_chains

    chain = next(c for c in make_eval_chains(10, seed=0) if c.tasks[0].family == "place")
    with PiperCellEnv(SimConfig(image_width=64, image_height=48, render_wrist=False)) as env:
        env.reset(chain=chain)
        expert = ScriptedExpert(env)
        task = env.current_task
        assert env.gaze_object == f"{task.obj}_block"
        seen = []
        for _ in range(env.config.max_subtask_steps):
            _, info = env.step(expert.act(), render=False)
            seen.append(env.gaze_object)
            if info["subtask_success"]:
                break
        assert f"{task.dest}_bowl" in seen, "the gaze moved to the bowl while the block was carried"
        held = seen.index(f"{task.dest}_bowl")
        assert set(seen[:held]) == {f"{task.obj}_block"}


def test_an_open_command_on_a_held_block_opens_the_fingers_at_once_and_a_small_one_keeps_the_grip():
    """Closed on a block, the gripper's set-point winds down to the closing target below the block's
    width; a servo gripper opens from where its fingers are, so the release starts in the first
    control period instead of after unwinding that gap (0.4 s for a 4 cm block at 0.1 m/s)."""
    chain = next(c for c in make_eval_chains(12, seed=0) if c.tasks[0].family == "pick")
    block = f"{chain.tasks[0].obj}_block"
    with PiperCellEnv(SimConfig(image_width=32, image_height=24)) as env:
        env.reset(chain=chain)
        expert = ScriptedExpert(env)
        for _ in range(env.config.max_subtask_steps):
            _, info = env.step(expert.act(), render=False)
            if info["subtask_success"]:
                break
        assert all(env.touching_gripper(block))
        held = env.state()
        assert held[6] > 0.03  # the fingers stopped on the block, far above the closing target
        with env.branch():
            for _ in range(10):  # a command a hair above the wound-down set-point still squeezes
                env.step(np.concatenate([held[:6], [0.002]]), render=False)
            assert all(env.touching_gripper(block))
        env.step(np.concatenate([held[:6], [GRIPPER_MAX]]), render=False)
        assert env.state()[6] > held[6] + 0.005  # moving after one 0.1 s period
        env.step(np.concatenate([held[:6], [GRIPPER_MAX]]), render=False)
        assert not all(env.touching_gripper(block))
