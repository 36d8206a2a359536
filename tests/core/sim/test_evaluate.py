"""Evaluation metrics and `reconvla eval sim`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reconvla_core.cli.main import main
from reconvla_core.piper import GRIPPER_MAX, SOFT_JOINT_UPPER
from reconvla_core.policy import ActionChunk, Policy
from reconvla_core.runtime.safety import LIMIT_TOLERANCE
from reconvla_core.sim.env import HOME_JOINTS, PiperCellEnv, SimConfig
from reconvla_core.sim.evaluate import ChainResult, deployable, run_chain, summarise
from reconvla_core.sim.tasks import make_eval_chains


def test_summarise_calvin_metrics():
    results = [
        ChainResult(0, 5, ["pick", "place", "stack", "place", "pick"], 100),
        ChainResult(1, 2, ["stack", "place", "pick", "place", "place"], 100),
        ChainResult(2, 0, ["place", "pick", "place", "stack", "place"], 100),
    ]
    metrics = summarise(results)
    assert metrics["avg_len"] == pytest.approx(7 / 3)
    assert metrics["success_by_position"] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
    # attempts: chain0 all 5; chain1 stack, place (ok) + pick (failed); chain2 place (failed)
    assert metrics["per_task_attempts"] == {"pick": 3, "place": 4, "stack": 2}
    assert metrics["per_task"]["pick"] == pytest.approx(2 / 3)
    assert metrics["per_task"]["place"] == pytest.approx(3 / 4)
    assert metrics["per_task"]["stack"] == pytest.approx(1.0)


def test_eval_sim_random_and_expert(tmp_path, capsys):
    out = tmp_path / "random"
    code = main(["eval", "sim", "--policy", "random", "--chains", "2", "--json", "--out", str(out),
                 "--image-size", "48x32", "--time-limit", "3", "--record", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"avg_len", "success_by_position", "per_task", "chains", "steps_per_s"}
    assert result["chains"] == 2 and len(result["success_by_position"]) == 5
    assert result["avg_len"] == 0.0  # random joint targets do not solve tasks
    assert (out / "eval.json").is_file() and (out / "eval_sim.png").stat().st_size > 1000
    assert (out / "rollout_00.gif").is_file() and (out / "rollout_00_first.png").is_file()
    assert json.loads((out / "eval.json").read_text())["avg_len"] == result["avg_len"]

    code = main(["eval", "sim", "--policy", "expert", "--chains", "1", "--json", "--out", str(tmp_path / "e"),
                 "--image-size", "48x32", "--record", "0"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["avg_len"] == 5.0 and result["success_by_position"] == [1.0] * 5


HOME = np.concatenate([HOME_JOINTS, [GRIPPER_MAX]])


def test_a_chunk_runs_as_the_deployment_would_run_it():
    """The deployment's limit check: within the tolerance beyond a soft limit a target is clipped
    onto it, further out the whole chunk is refused and the arm holds its last command."""
    held = HOME.copy()
    near = np.tile(HOME, (3, 1))
    near[1, 4] = SOFT_JOINT_UPPER[4] + LIMIT_TOLERANCE / 2
    actions, accepted = deployable(near, held)
    assert accepted and actions[1][4] == pytest.approx(SOFT_JOINT_UPPER[4])
    np.testing.assert_array_equal(actions[0], HOME)
    beyond = near.copy()
    beyond[2, 4] = SOFT_JOINT_UPPER[4] + 2 * LIMIT_TOLERANCE  # joint5 1.21 rad: still inside the hard limit
    actions, accepted = deployable(beyond, held)
    assert not accepted and len(actions) == 3
    assert all(np.array_equal(action, held) for action in actions)
    with pytest.raises(ValueError, match="shape"):
        deployable(np.zeros((2, 6)), held)


class _BeyondTheSoftLimit(Policy):
    """Asks to move joint1 by 0.3 rad with joint5 where the safety layer refuses it."""

    needs_images = False

    def infer(self, obs):
        target = HOME.copy()
        target[0] += 0.3
        target[4] = SOFT_JOINT_UPPER[4] + 2 * LIMIT_TOLERANCE
        return ActionChunk(np.tile(target, (5, 1)))


def test_refused_chunks_leave_the_arm_where_it_was():
    chain = make_eval_chains(1, seed=0)[0]
    with PiperCellEnv(SimConfig(image_width=32, image_height=24, subtask_time_limit_s=2.0)) as env:
        result = run_chain(env, _BeyondTheSoftLimit(), chain)
        assert result.completed == 0 and result.chunks > 0
        assert result.refused_chunks == result.chunks
        np.testing.assert_allclose(env.state()[:6], HOME_JOINTS, atol=0.02)
    metrics = summarise([result])
    assert metrics["refused_chunks"] == metrics["chunks"] == result.chunks


def test_eval_sim_bad_policy_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", "sim", "--policy", str(tmp_path / "missing"), "--chains", "1", "--json"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--policy must be 'expert', 'random' or a checkpoint directory" in err


def test_gaze_points_are_scored_by_phase_and_by_the_object_they_are_on():
    """The expert drives; a policy that reports the true gaze centre scores 0 error and is always on
    the gaze object; one that always points at the subtask's destination is on the other named object
    during a place's approach and on the gaze object during its carry."""
    from reconvla_core.policy import ActionChunk, ExpertPolicy, Policy
    from reconvla_core.sim.env import PiperCellEnv, SimConfig
    from reconvla_core.sim.evaluate import evaluate_policy
    from reconvla_core.sim.tasks import make_eval_chains

    class Pointing(Policy):
        needs_images = False

        def __init__(self, env, at_destination: bool) -> None:
            self.env, self.expert, self.at_destination = env, ExpertPolicy(env), at_destination
            self.name = "pointing"

        def infer(self, obs):
            name = self.env.gaze_object
            if self.at_destination:
                name = self.env.destination_object or "distractor_0"
            box = self.env.gaze_box(name)
            return ActionChunk(self.expert.infer(obs).actions, gaze_point=0.5 * (box[:2] + box[2:4]))

    chains = [chain for chain in make_eval_chains(12, seed=0) if chain.tasks[0].family == "place"][:1]
    assert chains  # the fixed set has a chain starting with a place
    config = SimConfig(image_width=48, image_height=32, clip_actions=True)
    with PiperCellEnv(config) as env:
        true, _ = evaluate_policy(Pointing(env, False), chains, env=env, progress=False)
        wrong, _ = evaluate_policy(Pointing(env, True), chains, env=env, progress=False)
        silent, _ = evaluate_policy(ExpertPolicy(env), chains, env=env, progress=False)
    assert true["gaze_points"]["mean_error"] == 0.0 and true["gaze_points"]["on"]["gaze"] == 1.0
    assert {"approach-place", "carry-place"} <= set(true["gaze_points"]["by_phase"])
    approach, carry = wrong["gaze_points"]["by_phase"]["approach-place"], wrong["gaze_points"]["by_phase"]["carry-place"]
    assert approach["on"]["other_named"] == 1.0 and approach["mean_error"] > 0.05
    assert carry["on"]["gaze"] == 1.0 and carry["mean_error"] == 0.0
    for phase, stats in wrong["gaze_points"]["by_phase"].items():
        if phase.endswith("pick"):
            assert stats["on"]["gaze"] == 0.0  # the distractor, or nothing
    assert sum(wrong["gaze_points"]["on"].values()) == pytest.approx(1.0, abs=0.01)
    assert "gaze_points" not in silent  # a policy without a gaze point gets no gaze section
    # Where the subtask is decided: the start of the place's approach already looks at the bowl.
    assert wrong["gaze_points"]["start_of_approach"]["place"]["on"]["other_named"] == 1.0
    # The expert completes its subtasks; the chunks after the chain's last completed one would be "failed".
    outcome = true["gaze_points"]["by_outcome"]
    assert outcome["completed"]["chunks"] + outcome.get("failed", {"chunks": 0})["chunks"] == true["gaze_points"]["chunks"]


def test_gaze_at_the_start_of_each_approach_and_by_the_subtasks_outcome():
    """Only each approach's first APPROACH_START_CHUNKS chunks count as its start; chunks of failed
    subtasks are scored apart from those of completed ones."""
    from reconvla_core.sim.evaluate import APPROACH_START_CHUNKS, GazeSample, summarise_gaze

    lost = [GazeSample("stack", "approach", 0.3, "other_named", index=i, completed=False) for i in range(20)]
    won = [GazeSample("stack", "approach", 0.0, "gaze", index=i, completed=True) for i in range(4)]
    won += [GazeSample("stack", "carry", 0.0, "gaze", index=0, completed=True)]
    summary = summarise_gaze(lost + won)
    assert summary["on"]["gaze"] == pytest.approx(5 / 25)  # chunks of the lost subtask dominate the share
    start = summary["start_of_approach"]["stack"]
    assert start["chunks"] == 2 * APPROACH_START_CHUNKS and start["on"]["gaze"] == pytest.approx(0.5)
    assert summary["by_outcome"]["failed"]["chunks"] == 20 and summary["by_outcome"]["failed"]["on"]["gaze"] == 0.0
    assert summary["by_outcome"]["completed"]["on"]["gaze"] == 1.0
