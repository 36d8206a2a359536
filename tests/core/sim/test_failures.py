"""How a failed subtask failed (sim/failures.py), from hand-made traces and from the twin itself."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.sim.failures import FAILURE_MODES, SubtaskTrace, classify, summarise_failures


def _trace(family: str = "stack", **changes) -> SubtaskTrace:
    """A subtask that grasped and lifted its block and released it right on its destination."""
    here, there = np.array([0.30, 0.10, 0.015]), np.array([0.30, -0.10, 0.015])
    fields = dict(family=family, block_start=here, block_end=there + [0, 0, 0.03], destination_start=there,
                  destination_end=there, grasped=True, lifted=True)
    fields.update(changes)
    return SubtaskTrace(**fields)


@pytest.mark.parametrize(("changes", "mode"), [
    (dict(grasped=False, lifted=False, block_end=np.array([0.30, 0.10, 0.015]), other_lifted=True), "wrong_block"),
    (dict(grasped=False, lifted=False, block_end=np.array([0.35, 0.10, 0.015])), "pushed_away"),
    (dict(grasped=False, lifted=False, block_end=np.array([0.305, 0.10, 0.015])), "not_grasped"),
    (dict(lifted=False, block_end=np.array([0.30, 0.10, 0.015])), "not_lifted"),
    (dict(destination_end=np.array([0.33, -0.10, 0.015])), "destination_moved"),
    (dict(held_at_end=True, block_end=np.array([0.30, 0.02, 0.10])), "held_at_timeout"),  # on the way
    (dict(held_at_end=True, block_end=np.array([0.31, -0.09, 0.07])), "held_over_target"),  # there, not let go
    (dict(block_end=np.array([0.30, 0.0, 0.015])), "dropped_away"),
    (dict(block_end=np.array([0.30, 0.0, 0.015]), lost_while_shut=True), "slipped"),
    (dict(released_at=np.array([0.31, 0.11, 0.03]), block_end=np.array([0.30, 0.02, 0.015])),
     "not_carried"),  # let go where it stood, pushed on afterwards
    (dict(released_at=np.array([0.30, -0.09, 0.06]), block_end=np.array([0.30, 0.05, 0.015])),
     "released_off_target"),  # let go over the base block, rolled off
    (dict(block_end=np.array([0.30, -0.08, 0.015])), "released_off_target"),
])
def test_each_failure_mode_from_its_trace(changes, mode):
    assert classify(_trace(**changes)) == mode


def test_a_grasped_pick_fails_only_by_not_lifting_it():
    assert classify(_trace("pick", destination_start=None, destination_end=None, lifted=False)) == "not_lifted"


def test_failures_are_counted_per_family_in_a_fixed_order():
    counts = summarise_failures([("stack", "held_at_timeout"), ("pick", "not_grasped"), ("stack", "wrong_block"),
                                 ("stack", "held_at_timeout")])
    assert counts == {"pick": {"not_grasped": 1}, "stack": {"wrong_block": 1, "held_at_timeout": 2}}
    assert list(counts["stack"]) == [m for m in FAILURE_MODES if m in counts["stack"]]


def test_the_twin_names_a_policy_that_never_moves_and_one_that_never_lets_go():
    """Real PyBullet: holding still fails a pick as not_grasped; the expert with its gripper kept shut
    once it holds the block carries it over the bowl and times out still holding it there."""
    from reconvla_core.piper import GRIPPER_MIN
    from reconvla_core.policy import ActionChunk, ExpertPolicy, Policy
    from reconvla_core.sim.env import PiperCellEnv, SimConfig
    from reconvla_core.sim.evaluate import evaluate_policy
    from reconvla_core.sim.tasks import make_eval_chains

    class Still(Policy):
        needs_images = False
        name = "still"

        def infer(self, obs):
            return ActionChunk(np.repeat(obs["state"][None], 5, axis=0))

    class NeverLetsGo(Policy):
        needs_images = False
        name = "never-lets-go"

        def __init__(self, env) -> None:
            self.env, self.expert, self.holding = env, ExpertPolicy(env), False

        def reset(self) -> None:
            self.expert.reset()
            self.holding = False

        def infer(self, obs):
            actions = np.array(self.expert.infer(obs).actions, dtype=np.float64)
            self.holding = self.holding or all(self.env.touching_gripper(self.env.target_object))
            if self.holding:
                actions[:, 6] = GRIPPER_MIN
            return ActionChunk(actions)

    chains = make_eval_chains(12, seed=0)
    pick = [c for c in chains if c.tasks[0].family == "pick"][:1]
    place = [c for c in chains if c.tasks[0].family == "place"][:1]
    assert pick and place
    config = SimConfig(image_width=48, image_height=32, clip_actions=True, subtask_time_limit_s=10.0)
    with PiperCellEnv(config) as env:
        still, results = evaluate_policy(Still(), pick, env=env, progress=False)
        held, _ = evaluate_policy(NeverLetsGo(env), place, env=env, progress=False)
    assert results[0].failure == "not_grasped" and still["failures"] == {"pick": {"not_grasped": 1}}
    assert held["avg_len"] == 0.0 and held["failures"] == {"place": {"held_over_target": 1}}
    # The expert grasps at the block's centre: held on the tool's axis to a few millimetres.
    assert held["in_hand_offset"]["place"]["failed"]["n"] == 1
    assert held["in_hand_offset"]["place"]["failed"]["median_m"] < 0.005
    assert "in_hand_offset" not in still  # never lifted: nothing to measure


def test_in_hand_offsets_are_summarised_per_family_and_outcome():
    from reconvla_core.sim.failures import OFF_CENTRE, summarise_in_hand

    holds = [("stack", 0.002, True), ("stack", 0.004, True), ("stack", OFF_CENTRE + 0.005, False),
             ("stack", 0.001, False), ("place", 0.003, True)]
    summary = summarise_in_hand(holds)
    assert summary["stack"]["succeeded"] == {"n": 2, "median_m": 0.003, "share_off_centre": 0.0}
    assert summary["stack"]["failed"]["share_off_centre"] == 0.5
    assert summary["place"] == {"succeeded": {"n": 1, "median_m": 0.003, "share_off_centre": 0.0}}
