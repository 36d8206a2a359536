"""The twin's simulated HG-DAgger operator: it intervenes when the arm leaves the expert's path,
matches the leader to the follower before it drives, drives with the relabelling expert, hands back."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.sim.kinematics import tcp_pose
from reconvla_core.sim.operator import OperatorState, SimOperator
from reconvla_core.sim.realtime import RealtimeTwin


CONTROL_DT = 0.1


def run_twin(twin: RealtimeTwin, follower_target, ticks: int) -> list[str]:
    """``ticks`` control periods: a command (as arm_command would send it), physics, the operator."""
    events = []
    for _ in range(ticks):
        target = follower_target()
        if target is not None:
            twin.command(target, [0, 0, 0, 0, 0, 0, 100])
        for _ in range(5):
            twin.advance(CONTROL_DT / 5)
        progress = twin.control_tick()
        if progress.operator_event:
            events.append(progress.operator_event)
    return events


def test_the_operator_takes_over_when_the_arm_strays_and_drives_only_once_it_has_the_arm(env):
    operator = SimOperator(env, deviation_m=0.04, speed=1.0, max_drive_s=1.0)
    twin = RealtimeTwin(env, operator=operator)
    twin.reset(1, task="pick red")
    start = twin.state()
    np.testing.assert_allclose(operator.leader, start)  # the leader rests where the arm starts

    # The policy holds still: on the path, no intervention.
    assert run_twin(twin, lambda: start, 5) == [] and operator.state is OperatorState.WATCHING
    np.testing.assert_allclose(twin.leader_command, start)

    # The policy turns the base the wrong way: the TCP leaves the expert's path.
    drift = {"q": start.copy()}

    def drifting():
        drift["q"] = drift["q"] + np.array([0.05, 0, 0, 0, 0, 0, 0])
        return drift["q"]

    events = run_twin(twin, drifting, 40)
    assert events == ["takeover"], (events, operator.deviation)
    assert operator.deviation > 0.04 and operator.interventions == 1
    tcp = tcp_pose(twin.state()[:6])[:3, 3]
    assert min(np.linalg.norm(tcp - p) for p in operator.path) > 0.04

    # arm_command holds the arm in handover: the operator brings the leader onto it, never past it.
    held = twin.state()
    assert run_twin(twin, lambda: held, 15) == []
    assert operator.state is OperatorState.GRABBING  # matched, but the gate has not said "leader drives"
    assert np.max(np.abs(operator.leader[:6] - twin.state()[:6])) <= 0.01
    operator.leader_drives(True)  # arm_command's intervention flag
    assert run_twin(twin, lambda: held, 1) == [] and operator.state is OperatorState.DRIVING

    # The leader drives (arm_command passes it on): relabelled commands from the measured state.
    leads = []

    def leader_target():
        leads.append(np.max(np.abs(twin.leader_command[:6] - twin.state()[:6])))
        return twin.leader_command

    events = run_twin(twin, leader_target, 12)
    assert events == ["handback"] and operator.state is OperatorState.WATCHING
    assert max(leads) < 0.3  # one bounded step ahead of the arm, never a jump
    operator.leader_drives(False)
    # Watching again with a guide planned from where the arm is: on its path, no new takeover.
    here = twin.state()
    assert run_twin(twin, lambda: here, 5) == [] and operator.deviation < 0.04


def test_operator_and_expert_leader_exclude_each_other(env):
    with pytest.raises(ValueError, match="exclude"):
        RealtimeTwin(env, expert_leader=True, operator=SimOperator(env))
    for bad in ({"deviation_m": 0.0}, {"speed": -1.0}, {"max_drive_s": -1.0}):
        with pytest.raises(ValueError):
            SimOperator(env, **bad)
