"""`reconvla eval probe`: per-joint agreement with the expert while the expert drives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reconvla_core.cli.main import main
from reconvla_core.policy import ActionChunk, ExpertPolicy, Policy, RandomPolicy
from reconvla_core.sim.probe import JOINT_NAMES, probe_policy
from reconvla_core.sim.tasks import make_eval_chains


class HoldStill(Policy):
    """Predicts no motion: every joint's predicted motion is exactly zero."""

    name = "hold-still"

    def infer(self, obs):
        return ActionChunk(np.repeat(np.asarray(obs["state"], dtype=np.float64)[None], 5, axis=0))


def test_probe_counts_frames_and_scores_a_motionless_policy(env):
    chains = make_eval_chains(2)
    result = probe_policy(HoldStill(), chains, env=env, steps_per_chain=10)
    assert result["horizon"] == 5 and result["frames"] == 2 * (10 - 5 + 1)
    assert set(result["joints"]) == set(JOINT_NAMES)
    moving = [j for j in result["joints"].values() if j["moving_frames"] > 0]
    assert moving, "the expert moves some joint during the approach"
    for joint in moving:  # no predicted motion: no correlation, zero size, the expert's size is > 0
        assert joint["correlation"] == 0.0 and joint["mean_abs_predicted_rad"] == 0.0
        assert joint["mean_abs_true_rad"] > 0.05
    random = probe_policy(RandomPolicy(seed=0, chunk_size=5), chains, env=env, steps_per_chain=10)
    assert all(-1.0 <= j["correlation"] <= 1.0 for j in random["joints"].values())


def test_probe_rejects_the_expert_and_short_runs(env):
    with pytest.raises(ValueError, match="expert drives"):
        probe_policy(ExpertPolicy(env), make_eval_chains(1), env=env)
    with pytest.raises(ValueError, match="shorter than the policy's chunk"):
        probe_policy(HoldStill(), make_eval_chains(1), env=env, steps_per_chain=3)


def test_eval_probe_cli(capsys):
    rc = main(["eval", "probe", "--policy", "random", "--chains", "1", "--steps", "6", "--image-size", "64x48",
               "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chains"] == 1 and result["policy"] == "random" and set(result["joints"]) == set(JOINT_NAMES)
    assert main(["eval", "probe", "--policy", "expert", "--chains", "1", "--image-size", "64x48"]) == 2
    assert "expert drives" in capsys.readouterr().err


def test_box_agreement():
    from reconvla_core.sim.probe import box_agreement

    assert box_agreement([0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.3, 0.3]) == pytest.approx((1.0, 0.0))
    iou, centre = box_agreement([0.0, 0.0, 0.2, 0.2], [0.1, 0.0, 0.3, 0.2])
    assert iou == pytest.approx(0.02 / 0.06) and centre == pytest.approx(0.1)
    assert box_agreement([0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6])[0] == 0.0


def test_probe_scores_the_gaze_box_of_a_policy_that_gives_one(env):
    class Pointer(HoldStill):
        """Points at the simulator's own gaze box: perfect grounding."""

        def infer(self, obs):
            return ActionChunk(super().infer(obs).actions, box=env.gaze_box())

    result = probe_policy(Pointer(), make_eval_chains(1), env=env, steps_per_chain=6)
    assert result["gaze_box"] == {"frames": 6, "mean_iou": 1.0, "mean_centre_error": 0.0}
    assert "gaze_box" not in probe_policy(HoldStill(), make_eval_chains(1), env=env, steps_per_chain=6)


class SteersByGaze(Policy):
    """Reports keypoint 0 at the image centre; its base yaw moves GAIN x (gaze x - 0.5) when given a
    gaze point (``blind``: never reacts to it)."""

    name = "steers-by-gaze"
    GAIN = 0.5

    def __init__(self, blind: bool = False) -> None:
        self.blind = blind

    def infer(self, obs):
        chunk = np.repeat(np.asarray(obs["state"], dtype=np.float64)[None], 5, axis=0)
        point = obs.get("gaze_point")
        if point is not None and not self.blind:
            chunk[:, 0] += self.GAIN * (float(point[0]) - 0.5) * np.linspace(0.2, 1.0, 5)
        return ActionChunk(chunk, gaze_point=np.array([0.5, 0.5]))


def test_probe_measures_whether_the_head_steers_by_its_gaze_point(env):
    chains = make_eval_chains(2)
    assert "gaze" not in probe_policy(HoldStill(), chains, env=env, steps_per_chain=8)  # no gaze point: no section
    steering = probe_policy(SteersByGaze(), chains, env=env, steps_per_chain=8, gaze_shift=0.1)["gaze"]
    assert steering["frames"] == 16 and steering["shift"] == 0.1
    # right - left = GAIN x 2 x shift wherever neither shifted point is clipped at the image edge
    assert 0.0 < steering["base_yaw_response_rad"] <= SteersByGaze.GAIN * 0.2 + 1e-9
    assert steering["keypoint0_error"] > 0.0
    assert -1.0 <= steering["base_yaw_with_true_gaze"]["correlation"] <= 1.0
    blind = probe_policy(SteersByGaze(blind=True), chains, env=env, steps_per_chain=8)["gaze"]
    assert blind["base_yaw_response_rad"] == 0.0 and blind["base_yaw_with_true_gaze"]["mean_abs_predicted_rad"] == 0.0
    assert blind["keypoint0_error"] == pytest.approx(steering["keypoint0_error"])
