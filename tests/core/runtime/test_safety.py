"""Safety filter: property tests over arbitrary action sequences, plus the state machine."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconvla_core.piper import GRIPPER_MAX, GRIPPER_MIN, JOINT_LOWER, JOINT_UPPER, MAX_JOINT_SPEED
from reconvla_core.runtime.safety import ArmMode, HoldReason, SafetyConfig, SafetyFilter

pytestmark = pytest.mark.unit

LOWER = np.array(JOINT_LOWER + (GRIPPER_MIN,))
UPPER = np.array(JOINT_UPPER + (GRIPPER_MAX,))
HOME = np.array([0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03])
EPS = 1e-9

# Any float, including NaN, +-inf and absurd magnitudes.
any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-10.0, max_value=10.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0]),
)
# Targets: right length (mostly) or wrong length, or missing.
target = st.one_of(
    st.none(),
    st.lists(any_float, min_size=7, max_size=7),
    st.lists(st.floats(min_value=-4.0, max_value=4.0), min_size=7, max_size=7),
    st.lists(any_float, min_size=0, max_size=12),
)
# One control tick's events: the target plus optional feedback / chunk / operator events.
tick = st.fixed_dictionaries({
    "target": target,
    "observe": st.booleans(),
    "chunk": st.booleans(),
    "event": st.sampled_from([None] * 8 + ["estop", "reset", "enable", "disable"]),
    "late": st.sampled_from([1.0] * 6 + [3.0, 40.0]),  # control periods since the last tick
})


def make_filter(**overrides) -> SafetyFilter:
    return SafetyFilter(SafetyConfig(**overrides))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks=st.lists(tick, min_size=1, max_size=60),
       max_speed=st.floats(min_value=0.05, max_value=MAX_JOINT_SPEED),
       rate=st.sampled_from([10.0, 30.0, 100.0]))
def test_every_emitted_command_is_finite_inside_limits_and_bounded_per_period(ticks, max_speed, rate):
    cfg = SafetyConfig(control_rate_hz=rate, max_joint_speed=max_speed)
    soft_lower, soft_upper = cfg.soft_lower, cfg.soft_upper
    safety = SafetyFilter(cfg)
    max_step = cfg.max_step
    now = 0.0
    safety.observe(HOME, now)
    safety.note_chunk(now)
    assert safety.enable(now)[0]
    previous = safety.last_command
    estopped_since_enable = False
    for t in ticks:
        now += t["late"] / rate
        if t["observe"] and previous is not None:
            safety.observe(previous, now)  # the arm tracks the last command perfectly
        if t["chunk"]:
            safety.note_chunk(now)
        event = t["event"]
        if event == "estop":
            safety.estop()
            estopped_since_enable = True
        elif event == "reset":
            safety.reset()
        elif event == "enable":
            ok, _ = safety.enable(now)
            if ok:
                estopped_since_enable = False
                previous = safety.last_command  # the reference restarts at the measured pose
        elif event == "disable":
            safety.disable()
        command = safety.step(now, t["target"])
        if estopped_since_enable:
            assert command is None, "a motion command after estop without reset + enable"
        if command is None:
            continue
        positions = command.positions
        assert positions.shape == (7,)
        assert np.all(np.isfinite(positions))
        # The arm started inside the soft limits: no command ever leaves them, none is faster
        # than the configured speed.
        assert np.all(positions >= soft_lower - EPS) and np.all(positions <= soft_upper + EPS)
        assert np.all(np.abs(positions - previous) <= max_step + EPS), (positions, previous)
        assert 1 <= command.speed_percent <= cfg.max_speed_percent
        previous = positions


@settings(max_examples=150, deadline=None)
@given(start=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=7, max_size=7),
       targets=st.lists(st.lists(st.floats(min_value=-0.04, max_value=1.04), min_size=7, max_size=7),
                        min_size=1, max_size=40),
       max_speed=st.floats(min_value=0.05, max_value=MAX_JOINT_SPEED),
       gripper_speed=st.floats(min_value=0.01, max_value=0.5))
def test_from_any_start_no_command_goes_further_past_a_soft_limit_or_faster_than_configured(
        start, targets, max_speed, gripper_speed):
    cfg = SafetyConfig(control_rate_hz=30.0, max_joint_speed=max_speed, max_gripper_speed=gripper_speed)
    safety = SafetyFilter(cfg)
    pose = LOWER + np.array(start) * (UPPER - LOWER)  # anywhere within the hard limits
    safety.observe(pose, 0.0)
    assert safety.enable(0.0)[0]
    previous = safety.last_command
    np.testing.assert_array_equal(previous, pose)

    def outside(x: np.ndarray) -> np.ndarray:
        return np.maximum(cfg.soft_lower - x, 0.0) + np.maximum(x - cfg.soft_upper, 0.0)

    for k, fraction in enumerate(targets, start=1):
        goal = LOWER + np.array(fraction) * (UPPER - LOWER)  # mostly inside, some past the limits
        now = k * cfg.dt
        safety.observe(previous, now)
        safety.note_chunk(now)
        command = safety.step(now, goal)
        positions = command.positions
        assert np.all(np.abs(positions - previous) <= cfg.max_step + EPS)
        assert np.all(outside(positions) <= outside(previous) + EPS)  # never further out
        assert np.all(positions >= LOWER - EPS) and np.all(positions <= UPPER + EPS)
        excess = np.maximum(cfg.soft_lower - cfg.tolerance - goal, goal - cfg.soft_upper - cfg.tolerance)
        if np.any(excess > EPS):  # beyond a soft limit by more than the tolerance: rejected, not clamped
            assert command.hold is HoldReason.OUT_OF_LIMITS
            np.testing.assert_array_equal(positions, previous)
        previous = positions


@settings(max_examples=60, deadline=None)
@given(targets=st.lists(st.lists(st.floats(min_value=-4, max_value=4), min_size=7, max_size=7),
                        min_size=5, max_size=30),
       stale=st.sampled_from(["observation", "chunk"]))
def test_stale_observation_or_missing_chunk_holds_within_two_periods(targets, stale):
    cfg = SafetyConfig(control_rate_hz=30.0, observation_timeout_s=0.2, chunk_timeout_s=0.3)
    safety = SafetyFilter(cfg)
    dt = cfg.dt
    now = 0.0
    safety.observe(HOME, now)
    safety.note_chunk(now)
    safety.enable(now)
    last_fresh = now
    # Fresh phase: both inputs keep arriving, except the one that goes stale after tick 2.
    for k, target in enumerate(targets):
        now += dt
        if stale != "observation" or k < 2:
            safety.observe(safety.last_command, now)
            last_fresh = now if stale == "observation" else last_fresh
        if stale != "chunk" or k < 2:
            safety.note_chunk(now)
            last_fresh = now if stale == "chunk" else last_fresh
        safety.step(now, target)
    timeout = cfg.observation_timeout_s if stale == "observation" else cfg.chunk_timeout_s
    # Once the input is older than its timeout, the command must be constant within 2 periods.
    while now <= last_fresh + timeout:
        now += dt
        if stale == "chunk":
            safety.observe(safety.last_command, now)
        else:
            safety.note_chunk(now)
        safety.step(now, targets[-1])
    held = []
    for k in range(6):
        now += dt
        if stale == "chunk":
            safety.observe(safety.last_command, now)
        else:
            safety.note_chunk(now)
        held.append(safety.step(now, UPPER * 2).positions)  # a far target that would move the arm
    for positions in held[2:]:
        np.testing.assert_array_equal(positions, held[1])
    expected = HoldReason.STALE_OBSERVATION if stale == "observation" else HoldReason.NO_FRESH_CHUNK
    assert safety.hold_reason(now) is expected


@settings(max_examples=60, deadline=None)
@given(targets=st.lists(target, min_size=1, max_size=20),
       events=st.lists(st.sampled_from(["enable", "disable", "observe", "chunk"]), max_size=10))
def test_after_estop_no_motion_until_reset_and_enable(targets, events):
    safety = make_filter()
    now = 0.0
    safety.observe(HOME, now)
    safety.note_chunk(now)
    safety.enable(now)
    safety.estop()
    for event, tgt in zip(events + ["enable"] * len(targets), targets):
        now += 1 / 30
        if event == "enable":
            ok, message = safety.enable(now)
            assert not ok and "reset" in message
        elif event == "disable":
            safety.disable()
        elif event == "observe":
            safety.observe(HOME, now)
        else:
            safety.note_chunk(now)
        assert safety.step(now, tgt) is None
        assert safety.mode is ArmMode.ESTOPPED
    safety.reset()
    safety.observe(HOME, now)
    safety.note_chunk(now)
    assert safety.step(now, HOME) is None, "reset alone must not allow motion"
    assert safety.enable(now)[0]
    assert safety.step(now, HOME) is not None


def test_disabled_at_start_unless_auto_enable():
    safety = make_filter()
    safety.observe(HOME, 0.0)
    safety.note_chunk(0.0)
    assert safety.mode is ArmMode.DISABLED
    assert safety.step(0.0, HOME) is None

    auto = make_filter(auto_enable=True)
    assert auto.step(0.0, HOME) is None  # no feedback yet: position unknown, nothing sent
    auto.observe(HOME, 0.0)
    auto.note_chunk(0.0)
    assert auto.mode is ArmMode.ENABLED
    np.testing.assert_allclose(auto.step(0.0, HOME).positions, HOME)


def test_enable_refused_without_feedback():
    safety = make_filter()
    ok, message = safety.enable(0.0)
    assert not ok and "feedback" in message


def test_tracks_target_at_max_speed_and_clips_within_the_tolerance_onto_the_soft_limit():
    cfg = SafetyConfig(control_rate_hz=10.0, max_joint_speed=1.0)
    safety = SafetyFilter(cfg)
    safety.observe(HOME, 0.0)
    safety.note_chunk(0.0)
    safety.enable(0.0)
    near = HOME.copy()
    near[0] = JOINT_UPPER[0] - 0.05 + 0.015  # 15 mrad past the soft limit: inside the 20 mrad tolerance
    command = safety.step(0.05, near)
    assert command.rate_limited and command.clipped
    assert command.positions[0] == pytest.approx(0.1)  # 1 rad/s * 0.1 s
    now = 0.05
    for _ in range(40):
        now += 0.1
        safety.observe(safety.last_command, now)
        safety.note_chunk(now)
        command = safety.step(now, near)
    assert command.positions[0] == pytest.approx(JOINT_UPPER[0] - 0.05)  # the soft limit, not the hard one


def test_a_target_beyond_the_soft_limit_by_more_than_the_tolerance_is_rejected_not_clamped():
    safety = make_filter()
    safety.observe(HOME, 0.0)
    safety.note_chunk(0.0)
    safety.enable(0.0)
    far = HOME.copy()
    far[1] = -0.1  # joint2: 0.15 rad below its soft lower limit 0.05
    command = safety.step(0.01, far)
    assert command.hold is HoldReason.OUT_OF_LIMITS
    np.testing.assert_array_equal(command.positions, HOME)
    assert safety.counters.out_of_limits == 1 and safety.counters.rejected_targets == 1
    reason = safety.limit_violation(np.stack([HOME, far]))
    assert "joint2" in reason and "step 1" in reason and "soft lower limit 0.050" in reason
    assert safety.limit_violation(np.stack([HOME, HOME])) is None


def test_conservative_defaults_for_a_learned_policy():
    cfg = SafetyConfig()
    assert cfg.max_joint_speed == 1.0 and cfg.max_gripper_speed == 0.1
    np.testing.assert_allclose(cfg.soft_lower[:6], np.array(JOINT_LOWER) + 0.05)
    np.testing.assert_allclose(cfg.soft_upper[:6], np.array(JOINT_UPPER) - 0.05)
    assert SafetyConfig(max_joint_speed=MAX_JOINT_SPEED).max_joint_speed == MAX_JOINT_SPEED  # overridable


def test_an_arm_resting_on_a_hard_limit_only_moves_back_inside():
    safety = make_filter(control_rate_hz=10.0)
    rest = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # the PiPer's rest pose: joint2/3 on the hard limits
    safety.observe(rest, 0.0)
    safety.enable(0.0)
    previous = safety.last_command
    np.testing.assert_array_equal(previous, rest)  # enable starts where the arm is, no jump
    safety.note_chunk(0.05)
    assert safety.step(0.05, rest).hold is HoldReason.OUT_OF_LIMITS  # the rest pose itself is out of bounds
    inside = rest + [0.0, 0.04, -0.04, 0.0, 0.0, 0.0, 0.0]  # within the tolerance of the soft limits
    for k in range(1, 20):
        safety.note_chunk(k * 0.1)
        safety.observe(previous, k * 0.1)
        command = safety.step(k * 0.1, inside)
        assert command.hold is HoldReason.NONE
        assert command.positions[1] >= previous[1] and command.positions[2] <= previous[2]
        previous = command.positions
    assert previous[1] == pytest.approx(0.05) and previous[2] == pytest.approx(-0.05)  # clipped onto the soft limits


def test_invalid_targets_hold_and_are_counted():
    safety = make_filter()
    safety.observe(HOME, 0.0)
    safety.note_chunk(0.0)
    safety.enable(0.0)
    bad = [[math.nan] * 7, [0.0] * 6, None, [math.inf] + [0.0] * 6, "not numbers"]
    for target in bad:
        command = safety.step(0.01, target)
        np.testing.assert_array_equal(command.positions, HOME)
        assert command.hold in (HoldReason.INVALID_TARGET, HoldReason.NO_TARGET)
    assert safety.counters.rejected_targets == 4


def test_speed_percentage_is_capped():
    safety = make_filter(speed_percent=80, max_speed_percent=40)
    safety.observe(HOME, 0.0)
    safety.note_chunk(0.0)
    safety.enable(0.0)
    assert safety.step(0.0, HOME).speed_percent == 40


def test_home_is_exempt_from_the_chunk_watchdog_only():
    safety = make_filter(chunk_timeout_s=0.1, observation_timeout_s=0.2)
    safety.observe(HOME, 0.0)
    safety.enable(0.0)
    goal = safety.home_target(np.zeros(7) + [0, 0.5, -0.5, 0, 0, 0, 0])
    assert safety.step(0.05, goal).hold is HoldReason.NO_FRESH_CHUNK
    assert safety.step(0.05, goal, require_chunk=False).hold is HoldReason.NONE
    assert safety.step(0.5, goal, require_chunk=False).hold is HoldReason.STALE_OBSERVATION
    with pytest.raises(ValueError, match="outside"):
        safety.home_target([5.0] * 7)


@pytest.mark.parametrize(
    "field, value",
    [("max_joint_speed", MAX_JOINT_SPEED * 2), ("control_rate_hz", 0.0), ("max_speed_percent", 101),
     ("gripper_max", 0.08), ("chunk_timeout_s", math.nan)],
)
def test_config_rejects_unsafe_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SafetyConfig(**{field: value})


def test_config_allows_narrower_joint_limits():
    lower = list(JOINT_LOWER)
    lower[0] = -1.0
    cfg = SafetyConfig(joint_lower=tuple(lower))
    safety = SafetyFilter(cfg)
    start = HOME.copy()
    start[0] = -2.0  # outside the narrowed range: enable starts from the clipped pose
    safety.observe(start, 0.0)
    safety.note_chunk(0.0)
    safety.enable(0.0)
    assert safety.step(0.0, start).positions[0] == pytest.approx(-1.0)


def test_an_opening_command_starts_from_where_the_fingers_stopped_on_an_object():
    """Closed on a 4 cm block, the command went on to 0 while the fingers stopped at 0.04 m: opening
    starts from the fingers (one period later they are commanded one step beyond them), not from the
    wound-down command; a target below the fingers keeps squeezing, and closing is unchanged."""
    safety = SafetyFilter(SafetyConfig(control_rate_hz=10.0))
    safety.observe(HOME, 0.0)
    assert safety.enable(0.0)[0]
    step = safety.config.max_gripper_speed * safety.config.dt
    holding = HOME.copy()
    holding[6] = 0.0
    now = 0.0
    for _ in range(10):  # close: the command ramps down to 0 while the block stops the fingers
        now += 0.1
        safety.observe(np.concatenate([HOME[:6], [0.04]]), now)
        safety.note_chunk(now)
        command = safety.step(now, holding)
    assert command.positions[6] == pytest.approx(0.0)
    now += 0.1
    safety.observe(np.concatenate([HOME[:6], [0.04]]), now)
    safety.note_chunk(now)
    assert safety.step(now, np.concatenate([HOME[:6], [0.002]])).positions[6] == pytest.approx(0.002)
    now += 0.1
    safety.observe(np.concatenate([HOME[:6], [0.04]]), now)
    safety.note_chunk(now)
    opening = safety.step(now, np.concatenate([HOME[:6], [GRIPPER_MAX]]))
    assert opening.positions[6] == pytest.approx(0.04 + step)
    assert opening.rate_limited


@settings(max_examples=60, deadline=None)
@given(last=st.floats(min_value=GRIPPER_MIN, max_value=GRIPPER_MAX),
       fingers=st.floats(min_value=GRIPPER_MIN, max_value=GRIPPER_MAX),
       goal=st.floats(min_value=GRIPPER_MIN, max_value=GRIPPER_MAX))
def test_the_gripper_command_never_outruns_both_the_last_command_and_the_fingers(last, fingers, goal):
    """Whatever the fingers report, a gripper command moves at most one step from the last command,
    or, opening past the fingers, one step beyond them; never past its target."""
    safety = SafetyFilter(SafetyConfig(control_rate_hz=10.0))
    start = HOME.copy()
    start[6] = last
    safety.observe(start, 0.0)
    assert safety.enable(0.0)[0]
    safety.observe(np.concatenate([HOME[:6], [fingers]]), 0.1)
    safety.note_chunk(0.1)
    target = np.concatenate([HOME[:6], [goal]])
    gripper = safety.step(0.1, target).positions[6]
    step = safety.config.max_gripper_speed * safety.config.dt
    if goal > fingers > last:
        assert gripper == pytest.approx(min(goal, fingers + step))
    else:
        assert abs(gripper - last) <= step + EPS
    assert min(last, goal) - EPS <= gripper <= max(last, goal) + EPS
