"""ArmController without ROS: the control logic of arm_command against a fake arm (the hardware seam)."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.runtime.action_queue import ActionChunk, ActionQueueConfig
from reconvla_core.runtime.arm_controller import ArmController, ArmControllerConfig
from reconvla_core.runtime.backend import (
    ArmFeedback,
    SimArmBackend,
    backend_names,
    make_backend,
    missing_backend_methods,
    register_backend,
)
from reconvla_core.runtime.safety import SafetyConfig

pytestmark = pytest.mark.unit

RATE = 10.0
DT = 1.0 / RATE
START = np.array([0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03])
HOME = (0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.05)
MAX_STEP = 1.0 * DT + 1e-9  # max_joint_speed 1 rad/s


class FakeArm:
    """A perfect follower: every command becomes the measured state at the next read."""

    def __init__(self, positions: np.ndarray = START, enable_ok: bool = True) -> None:
        self.positions = np.array(positions, dtype=np.float64)
        self.stamp = 0.0
        self.enable_ok = enable_ok
        self.sent: list[np.ndarray] = []
        self.calls: list[str] = []
        self.leader: ArmFeedback | None = None
        self.read_error: Exception | None = None
        self.reporting = True

    def connect(self) -> None:
        self.calls.append("connect")

    def enable(self, timeout_s: float = 5.0) -> bool:
        self.calls.append("enable")
        return self.enable_ok

    def disable(self) -> None:
        self.calls.append("disable")

    def send(self, positions: np.ndarray, speed_percent: int) -> None:
        self.sent.append(np.array(positions))
        self.positions = np.array(positions)

    def read_state(self) -> ArmFeedback | None:
        if self.read_error is not None:
            raise self.read_error
        if not self.reporting:
            return None
        self.stamp += 1.0
        return ArmFeedback(self.positions.copy(), self.stamp)

    def read_leader_command(self) -> ArmFeedback | None:
        return self.leader

    def advance(self, dt: float) -> None:
        self.calls.append("advance")

    def emergency_stop(self) -> None:
        self.calls.append("emergency_stop")

    def close(self) -> None:
        self.calls.append("close")


def make(arm: FakeArm | None = None, **safety: object) -> tuple[ArmController, FakeArm]:
    arm = arm or FakeArm()
    options = {"control_rate_hz": RATE, "observation_timeout_s": 1.0, "chunk_timeout_s": 1.0, **safety}
    config = ArmControllerConfig(safety=SafetyConfig(**options), queue=ActionQueueConfig(max_chunk_age_s=5.0),
                                 home=HOME, read_leader=True)
    controller = ArmController(arm, config)
    controller.connect()
    return controller, arm


def ramp(start: np.ndarray, delta: np.ndarray, steps: int, stamp: float) -> ActionChunk:
    return ActionChunk.from_rate(stamp, [start + delta * (k + 1) / steps for k in range(steps)], RATE)


def run(controller: ArmController, t0: float, ticks: int) -> float:
    t = t0
    for _ in range(ticks):
        controller.tick(t, wall=t)
        t += DT
    return t


def test_disabled_until_enabled_then_chunks_move_the_arm_in_bounded_steps():
    controller, arm = make()
    run(controller, 0.0, 3)
    assert arm.sent == [] and controller.safety.mode.value == "disabled"
    assert "advance" in arm.calls  # the backend gets its per-period hook even while disabled

    ok, message = controller.enable(0.3, True)
    assert ok, message
    assert arm.calls.count("enable") == 1
    delta = np.array([0.5, 0, 0, 0, 0, 0, 0.0])
    outcome = controller.push_chunk(ramp(START, delta, 10, 0.3), 0.3)
    assert outcome.accepted and outcome.reason == "accepted" and controller.counts["chunks"] == 1
    run(controller, 0.3, 15)
    assert arm.positions[0] > 0.4  # it followed the chunk
    steps = np.abs(np.diff(np.stack([START] + arm.sent), axis=0))
    assert np.all(steps[:, :6] <= MAX_STEP)  # and never faster than the filter allows


def test_enable_is_refused_without_feedback_and_disable_stops_commands():
    arm = FakeArm()
    arm.reporting = False
    controller, _ = make(arm)
    ok, message = controller.enable(0.0, True)
    assert not ok and "feedback" in message
    arm.reporting = True
    assert controller.enable(0.1, True)[0]
    run(controller, 0.1, 3)
    sent = len(arm.sent)
    assert sent == 3  # holding where the arm is (no chunk yet)
    np.testing.assert_allclose(arm.sent[-1], START)
    assert controller.enable(0.5, False) == (True, "disabled: no motion commands")
    assert "disable" in arm.calls
    run(controller, 0.5, 5)
    assert len(arm.sent) == sent


def test_auto_enable_enables_the_backend_once_and_backs_off_when_the_arm_refuses():
    controller, arm = make(auto_enable=True)
    run(controller, 0.0, 5)
    assert arm.calls.count("enable") == 1 and len(arm.sent) >= 4
    assert controller.safety.mode.value == "enabled"

    refusing, arm2 = make(FakeArm(enable_ok=False), auto_enable=True)
    run(refusing, 0.0, 5)
    assert arm2.sent == []  # the arm did not report enabled: nothing is sent
    assert refusing.safety.mode.value == "disabled"


def test_estop_latches_until_reset_and_enable_and_tells_the_backend():
    controller, arm = make()
    controller.enable(0.0, True)
    controller.push_chunk(ramp(START, np.array([0.5] + [0.0] * 6), 10, 0.0), 0.0)
    run(controller, 0.0, 3)
    assert controller.estop(0.3) == (True, "emergency stop latched: reset, then enable")
    assert "emergency_stop" in arm.calls
    sent = len(arm.sent)
    run(controller, 0.3, 5)
    assert len(arm.sent) == sent
    ok, message = controller.enable(0.8, True)
    assert not ok and "reset" in message
    assert controller.reset()[0] and controller.safety.mode.value == "disabled"
    assert controller.enable(0.9, True)[0]
    run(controller, 0.9, 2)
    assert len(arm.sent) == sent + 2  # holds at the measured pose: the latched chunk was dropped
    np.testing.assert_allclose(arm.sent[-1], arm.sent[-2])


def test_a_failing_estop_or_feedback_read_is_counted_never_raised():
    controller, arm = make(observation_timeout_s=0.2)
    controller.enable(0.0, True)

    def broken() -> None:
        raise OSError("bus off")

    arm.emergency_stop = broken
    assert controller.estop(0.0)[0]  # still latched in software
    controller.reset()
    controller.enable(0.1, True)
    arm.read_error = OSError("CAN read failed")
    run(controller, 0.1, 10)
    assert controller.counts["feedback_errors"] == 10
    held = {tuple(p) for p in arm.sent}
    assert held == {tuple(START)}  # only ever held where it was


def test_homing_goes_home_through_the_filter_and_drops_chunks_meanwhile():
    controller, arm = make()
    ok, message = controller.start_homing(0.0)
    assert not ok and "enable first" in message
    controller.enable(0.0, True)
    assert controller.start_homing(0.0)[0] and controller.homing
    outcome = controller.push_chunk(ramp(START, np.array([0.3] + [0.0] * 6), 5, 0.0), 0.0)
    assert not outcome.accepted and outcome.reason == "homing" and controller.counts["dropped_homing"] == 1
    t = run(controller, 0.0, 40)
    assert not controller.homing
    np.testing.assert_allclose(arm.positions, HOME, atol=1e-4)
    steps = np.abs(np.diff(np.stack([START] + arm.sent), axis=0))
    assert np.all(steps[:, :6] <= MAX_STEP)
    assert controller.diagnostics_values(t)["homing"] is False


def test_a_chunk_beyond_a_soft_limit_is_rejected_whole_with_its_offending_steps():
    controller, arm = make()
    controller.enable(0.0, True)
    actions = np.stack([START, START, START])
    actions[2, 1] = 3.5  # joint2 far past its upper limit
    outcome = controller.push_chunk(ActionChunk.from_rate(0.0, actions, RATE), 0.0)
    assert not outcome.accepted and outcome.reason == "out_of_limits"
    assert outcome.violating_steps.tolist() == [False, False, True]
    assert controller.counts["dropped_out_of_limits"] == 1 and controller.counts["chunks"] == 0


def test_starvation_is_reported_once_per_spell_and_clears_with_a_fresh_chunk():
    controller, _ = make(chunk_timeout_s=0.5)
    controller.enable(0.0, True)
    run(controller, 0.0, 20)
    assert not controller.starving  # nothing received yet (a loading model) is not starvation
    controller.push_chunk(ramp(START, np.zeros(7), 3, 2.0), 2.0)
    t = run(controller, 2.0, 20)
    assert controller.starving
    level, message = controller.health(controller.diagnostics_values(t))
    assert level == "error" and "no usable action chunk" in message
    controller.push_chunk(ramp(START, np.zeros(7), 3, t), t)
    assert not controller.starving


def test_new_feedback_and_leader_readings_are_returned_once():
    controller, arm = make()
    out = controller.tick(0.0, wall=0.0)
    assert out.feedback is not None and out.leader is None
    arm.leader = ArmFeedback(START + 0.1, 7.0)
    assert controller.tick(0.1, wall=0.1).leader is arm.leader
    assert controller.tick(0.2, wall=0.2).leader is None  # the same reading again: not new
    arm.reporting = False
    assert controller.tick(0.3, wall=0.3).feedback is None


def test_missed_periods_are_counted_from_the_wall_clock():
    controller, _ = make()
    controller.tick(0.0, wall=0.0)
    controller.tick(0.1, wall=0.1)
    controller.tick(0.5, wall=0.5)  # three periods were missed
    assert controller.counts["missed_ticks"] == 3 and controller.counts["ticks"] == 3


def test_close_stops_ticking_and_closes_the_backend_once():
    controller, arm = make()
    controller.close()
    controller.close()
    assert arm.calls.count("close") == 1
    out = controller.tick(0.0, wall=0.0)
    assert out.command is None and out.feedback is None and controller.counts["ticks"] == 0


def test_a_backend_missing_protocol_methods_is_refused_by_name():
    class Partial:
        def connect(self) -> None: ...
        def send(self, positions: np.ndarray, speed_percent: int) -> None: ...

    assert "read_leader_command" in missing_backend_methods(Partial())
    with pytest.raises(TypeError, match="read_state"):
        ArmController(Partial())  # type: ignore[arg-type]
    assert missing_backend_methods(FakeArm()) == []
    assert missing_backend_methods(SimArmBackend()) == []


def test_backends_are_picked_by_name_from_the_registry(monkeypatch):
    from reconvla_core.runtime import backend

    monkeypatch.setattr(backend, "_BACKENDS", dict(backend._BACKENDS))  # the test's backend goes away after
    assert {"piper_sdk", "sim"} <= set(backend_names())
    assert isinstance(make_backend("sim", {"sim_seed": 3}), SimArmBackend)
    with pytest.raises(ValueError, match="backend must be one of"):
        make_backend("can", {})

    @register_backend("fake_for_test")
    def _fake(params: dict, node: object) -> FakeArm:
        return FakeArm(np.array(params["start"]))

    arm = make_backend("fake_for_test", {"start": HOME})
    assert isinstance(arm, FakeArm) and np.allclose(arm.positions, HOME)


# --- operator interventions (HG-DAgger) ---------------------------------------------------------
def make_gated(auto_takeover_rad: float | None = None, **safety: object) -> tuple[ArmController, FakeArm]:
    from reconvla_core.runtime.intervention import InterventionConfig

    arm = FakeArm()
    options = {"control_rate_hz": RATE, "observation_timeout_s": 1.0, "chunk_timeout_s": 0.5, **safety}
    config = ArmControllerConfig(safety=SafetyConfig(**options), queue=ActionQueueConfig(max_chunk_age_s=5.0),
                                 home=HOME, intervention=InterventionConfig(auto_takeover_rad=auto_takeover_rad))
    controller = ArmController(arm, config)
    controller.connect()
    controller.tick(0.0, wall=0.0)
    assert controller.enable(0.0, True)[0]
    return controller, arm


class Leader:
    """The operator's leader arm: a pose it publishes with a new stamp every period."""

    def __init__(self, arm: FakeArm, pose: np.ndarray) -> None:
        self.arm, self.pose, self.stamp = arm, np.array(pose, dtype=np.float64), 100.0
        self.publishing = True

    def publish(self) -> None:
        if self.publishing:
            self.stamp += 1.0
            self.arm.leader = ArmFeedback(self.pose.copy(), self.stamp)


def drive(controller: ArmController, leader: Leader, t: float, ticks: int, chunk_every: float | None = None):
    outputs = []
    for _ in range(ticks):
        leader.publish()
        if chunk_every is not None:  # a policy that plans from where the arm is, and wants to hold there
            controller.push_chunk(ramp(leader.arm.positions, np.zeros(7), 3, t), t)
        outputs.append(controller.tick(t, wall=t))
        t += DT
    return t, outputs


def test_takeover_holds_until_the_leader_agrees_then_the_leader_drives_without_a_jump():
    controller, arm = make_gated()
    away = START + np.array([0.6, -0.3, 0.2, 0.0, 0.0, 0.4, 0.02])
    leader = Leader(arm, away)
    drifting = ramp(START, np.array([0.3] + [0.0] * 6), 10, 0.0)  # the policy moves joint1 off
    controller.push_chunk(drifting, 0.0)
    t, outputs = drive(controller, leader, 0.0, 3)
    assert [o.source for o in outputs] == ["policy"] * 3 and arm.positions[0] > START[0]

    ok, message = controller.request_takeover()
    assert ok and "agree" in message
    assert not controller.request_takeover()[0]  # already asked
    held = arm.positions.copy()
    t, outputs = drive(controller, leader, t, 5, chunk_every=DT)
    assert outputs[0].event == "takeover" and {o.source for o in outputs} == {"handover"}
    assert not any(o.leader_drives for o in outputs)
    for sent in arm.sent[-5:]:
        np.testing.assert_allclose(sent, held)  # holds; never chases the leader that is away
    assert not controller.start_homing(t)[0]  # the operator has the arm

    leader.pose = held + np.array([0.02] * 6 + [0.004])  # the operator brings the leader over
    t, outputs = drive(controller, leader, t, 1)
    assert outputs[0].event == "leader_drives" and outputs[0].leader_drives

    goal = held + np.array([-0.5, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0])
    for k in range(1, 11):  # the operator moves the leader on; no chunk arrives meanwhile
        leader.pose = held + (goal - held) * k / 10
        t, outputs = drive(controller, leader, t, 1)
        assert outputs[0].source == "leader" and outputs[0].leader_drives
    t, _ = drive(controller, leader, t, 10)
    np.testing.assert_allclose(arm.positions, goal, atol=1e-6)  # followed the leader, no chunk needed
    steps = np.abs(np.diff(np.stack([START] + arm.sent), axis=0))
    assert np.all(steps[:, :6] <= MAX_STEP)  # the filter bounded every step, the switch included
    values = controller.diagnostics_values(t)
    assert values["source"] == "leader" and values["interventions"] == 1 and values["hold_reason"] == "none"
    assert controller.health(values) == ("ok", "operator intervention: leader")

    # Hand back: the arm holds until the policy's target agrees with it, then the policy drives.
    assert controller.request_handback()[0] and not controller.request_handback()[0]
    here = arm.positions.copy()
    controller.push_chunk(ramp(here + 0.3, np.zeros(7), 3, t), t)  # a chunk far from the arm never drives
    t, outputs = drive(controller, leader, t, 2)
    assert {o.source for o in outputs} == {"handback"} and not any(o.leader_drives for o in outputs)
    np.testing.assert_allclose(arm.positions, here)
    t, outputs = drive(controller, leader, t, 2, chunk_every=DT)
    assert outputs[0].event == "policy_drives" and outputs[-1].source == "policy"


def test_auto_takeover_when_the_operator_moves_the_leader():
    controller, arm = make_gated(auto_takeover_rad=0.15)
    leader = Leader(arm, START + np.array([0.5, 0, 0, 0, 0, 0, 0]))  # resting away from the arm
    t, outputs = drive(controller, leader, 0.0, 3, chunk_every=DT)
    assert {o.source for o in outputs} == {"policy"}
    leader.pose = leader.pose - np.array([0.1, 0, 0, 0, 0, 0, 0])  # a small nudge: not yet
    t, outputs = drive(controller, leader, t, 2, chunk_every=DT)
    assert outputs[-1].source == "policy"
    leader.pose = START.copy()  # the operator grabbed it and brought it onto the arm
    t, outputs = drive(controller, leader, t, 2, chunk_every=DT)
    # Taken over and, the leader being on the arm already, handed to the leader in the same period.
    assert outputs[0].source == "leader" and outputs[0].leader_drives and controller.gate.segments == 1


def test_a_stale_leader_holds_the_arm_and_estop_makes_the_operator_match_again():
    controller, arm = make_gated()
    leader = Leader(arm, START)
    controller.request_takeover()
    t, outputs = drive(controller, leader, 0.0, 2)
    assert outputs[-1].source == "leader"
    leader.pose = START + np.array([0.3, 0, 0, 0, 0, 0, 0])
    t, _ = drive(controller, leader, t, 2)
    moved = arm.positions.copy()
    assert moved[0] > START[0]
    leader.publishing = False  # the leader's stream stops: its last command goes stale
    t, _ = drive(controller, leader, t, 8)
    assert np.abs(arm.positions[0] - moved[0]) <= 2 * MAX_STEP  # at most the periods before it went stale
    stopped = arm.positions.copy()
    t, _ = drive(controller, leader, t, 5)
    np.testing.assert_allclose(arm.positions, stopped)

    leader.publishing = True
    controller.estop(t)
    controller.reset()
    assert controller.enable(t, True)[0]
    leader.pose = stopped + np.array([0.4, 0, 0, 0, 0, 0, 0])  # moved while the arm was stopped
    t, outputs = drive(controller, leader, t, 3)
    assert {o.source for o in outputs} == {"handover"}  # must be matched to the arm again first
    np.testing.assert_allclose(arm.positions, stopped)


def test_without_interventions_the_requests_are_refused_and_no_source_is_reported():
    controller, _ = make()
    ok, message = controller.request_takeover()
    assert not ok and "interventions:=true" in message
    assert not controller.request_handback()[0]
    assert "source" not in controller.diagnostics_values(0.0)
    assert controller.tick(0.0, wall=0.0).source == "policy"


def test_a_separate_leader_source_is_read_instead_of_the_backend():
    class LeaderTopic:
        def __init__(self) -> None:
            self.reading: ArmFeedback | None = None

        def read_leader_command(self) -> ArmFeedback | None:
            return self.reading

    arm = FakeArm()
    arm.leader = ArmFeedback(START + 0.4, 1.0)  # e.g. the controller's own frames seen on the bus
    topic = LeaderTopic()
    config = ArmControllerConfig(safety=SafetyConfig(control_rate_hz=RATE), home=HOME, read_leader=True)
    controller = ArmController(arm, config, leader=topic)
    controller.connect()
    assert controller.tick(0.0, wall=0.0).leader is None
    topic.reading = ArmFeedback(START + 0.1, 5.0)
    assert controller.tick(0.1, wall=0.1).leader is topic.reading
