"""Policies: random within limits and seeded, expert bound to the env, checkpoint loading errors."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.piper import (
    GRIPPER_MAX,
    JOINT_LOWER,
    JOINT_UPPER,
    SOFT_ACTION_LOWER,
    SOFT_ACTION_UPPER,
    SOFT_JOINT_UPPER,
)
from reconvla_core.policy import ActionChunk, CheckpointPolicy, ExpertPolicy, Policy, RandomPolicy, TrueGazePolicy


def test_random_policy_is_seeded_and_within_limits():
    a, b = RandomPolicy(seed=1, chunk_size=4), RandomPolicy(seed=1, chunk_size=4)
    chunk = a.infer({}).actions
    assert chunk.shape == (4, 7) and np.array_equal(chunk, b.infer({}).actions)
    # Inside the soft limits: a random floor the safety layer would execute, not refuse.
    assert np.all(chunk >= SOFT_ACTION_LOWER) and np.all(chunk <= SOFT_ACTION_UPPER)
    assert np.all((chunk[:, 6] >= 0) & (chunk[:, 6] <= GRIPPER_MAX))


def test_expert_policy_returns_the_env_expert_command(env):
    env.reset(seed=2)
    chunk = ExpertPolicy(env).infer(env.observe(render=False))
    assert chunk.actions.shape == (1, 7) and chunk.attention is None and chunk.box is None


class _Recorder(Policy):
    needs_images = False
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.resets = 0

    def infer(self, obs):
        self.seen.append(obs)
        return ActionChunk(np.zeros(7))

    def reset(self) -> None:
        self.resets += 1


def test_true_gaze_policy_hands_the_wrapped_policy_the_twins_gaze_centre(env):
    env.reset(seed=3)
    inner = _Recorder()
    policy = TrueGazePolicy(inner, env)
    policy.reset()
    obs = env.observe(render=False)
    policy.infer(obs)
    box = env.gaze_box()
    assert np.allclose(inner.seen[0]["gaze_point"], [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    assert "gaze_point" not in obs  # the caller's observation is left alone
    assert inner.resets == 1 and policy.name == "recorder+true-gaze" and policy.needs_images is False
    # The gaze follows the twin's gaze object: moving it moves the point handed on.
    env.move_object(env.gaze_object, env.object_pose(env.gaze_object)[0] + [0.0, 0.05, 0.0])
    policy.infer(env.observe(render=False))
    assert not np.allclose(inner.seen[1]["gaze_point"], inner.seen[0]["gaze_point"])


def test_action_chunk_checks_and_checkpoint_errors(tmp_path):
    assert ActionChunk(np.zeros(7)).actions.shape == (1, 7)
    with pytest.raises(ValueError, match=r"\(K, 7\)"):
        ActionChunk(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="non-finite"):
        ActionChunk(np.full((3, 7), np.nan))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CheckpointPolicy(tmp_path / "nope")
    with pytest.raises(ValueError, match="dtype"):
        CheckpointPolicy(tmp_path, dtype="int8")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    from reconvla_core.model import ReconVLA, ReconVLAConfig

    model = ReconVLA(ReconVLAConfig.from_preset("tiny", recon_target="none", chunk_size=3))
    low, high = np.array(JOINT_LOWER + (0.0,)), np.array(JOINT_UPPER + (GRIPPER_MAX,))
    entry = {"min": low.tolist(), "max": high.tolist(), "q01": low.tolist(), "q99": high.tolist(),
             "mean": ((low + high) / 2).tolist(), "std": ((high - low) / 4).tolist()}
    model.set_norm_stats({"action": entry, "observation.state": entry})
    path = tmp_path_factory.mktemp("policy") / "checkpoint"
    model.save_pretrained(path)
    return path


def test_model_policy_keeps_its_targets_inside_the_soft_limits(tmp_path):
    """A model whose joint5 targets all lie past the soft limit (its stats say so): the policy clips
    each onto the limit and counts it, so the safety layer has no chunk to refuse."""
    pytest.importorskip("torch")
    from reconvla_core.model import ReconVLA, ReconVLAConfig
    from reconvla_core.policy import ModelPolicy

    model = ReconVLA(ReconVLAConfig.from_preset("tiny", recon_target="none", chunk_size=3))
    low, high = np.array(SOFT_ACTION_LOWER), np.array(SOFT_ACTION_UPPER)
    low[4], high[4] = SOFT_JOINT_UPPER[4] + 0.03, SOFT_JOINT_UPPER[4] + 0.04
    entry = {"min": low.tolist(), "max": high.tolist(), "q01": low.tolist(), "q99": high.tolist(),
             "mean": ((low + high) / 2).tolist(), "std": ((high - low) / 4).tolist()}
    model.set_norm_stats({"action": entry, "observation.state": entry})
    model.eval()
    obs = {"base_image": np.zeros((32, 48, 3), np.uint8), "wrist_image": np.zeros((32, 48, 3), np.uint8),
           "instruction": "pick up the red block", "state": (low + high) / 2}
    chunk = ModelPolicy(model).infer(obs)
    assert np.all(chunk.actions >= SOFT_ACTION_LOWER) and np.all(chunk.actions <= SOFT_ACTION_UPPER)
    np.testing.assert_allclose(chunk.actions[:, 4], SOFT_JOINT_UPPER[4])
    assert chunk.clipped_targets >= 3  # joint5 of every step, whatever else the untrained model asks


def test_checkpoint_policy_predicts_chunks_and_runs_in_eval(tiny_checkpoint, tmp_path, capsys):
    import json

    from reconvla_core.cli.main import main

    policy = CheckpointPolicy(tiny_checkpoint)
    obs = {"base_image": np.zeros((32, 48, 3), np.uint8), "wrist_image": np.zeros((32, 48, 3), np.uint8),
           "instruction": "pick up the red block", "state": np.zeros(7)}
    chunk = policy.infer(obs).actions
    assert chunk.shape == (3, 7) and np.all(np.isfinite(chunk))
    with pytest.raises(ValueError, match="needs base_image"):
        policy.infer(dict(obs, base_image=None))
    # The closed loop through `reconvla eval sim` with a checkpoint directory.
    code = main(["eval", "sim", "--policy", str(tiny_checkpoint), "--chains", "1", "--json", "--out",
                 str(tmp_path / "ck"), "--image-size", "48x32", "--time-limit", "1", "--record", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["policy"] == "checkpoint:checkpoint" and result["steps"] == 10  # 1 s at 10 Hz, then timeout
    assert (tmp_path / "ck" / "rollout_00.gif").is_file()
    assert result["gaze"] == "model"
    code = main(["eval", "sim", "--policy", str(tiny_checkpoint), "--chains", "1", "--json", "--out",
                 str(tmp_path / "oracle"), "--image-size", "48x32", "--time-limit", "1", "--gaze", "oracle"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["gaze"] == "oracle" and result["policy"] == "checkpoint:checkpoint+true-gaze"
