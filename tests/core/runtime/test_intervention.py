"""HG-DAgger gate: the operator takes over with the leader and hands back, never with a jump."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.runtime.intervention import CommandSource, InterventionConfig, InterventionGate

FOLLOWER = np.array([0.1, 1.2, -1.0, 0.0, 0.9, 0.2, 0.05])


def _towards(start: np.ndarray, goal: np.ndarray, steps: int) -> list[np.ndarray]:
    return [start + (goal - start) * (i + 1) / steps for i in range(steps)]


def test_takeover_waits_for_the_leader_to_agree_then_hands_back_without_a_jump():
    gate = InterventionGate(InterventionConfig(agree_tol_rad=0.05, agree_tol_m=0.01))
    leader_away = FOLLOWER + np.array([0.6, -0.4, 0.3, 0.2, 0.0, 0.5, 0.02])
    policy = FOLLOWER + 0.01
    out = gate.update(0.0, FOLLOWER, leader_away, policy_target=policy)
    assert out.source is CommandSource.POLICY and not out.intervening
    np.testing.assert_array_equal(out.target, policy)

    assert gate.request_takeover() and not gate.request_takeover()
    out = gate.update(0.1, FOLLOWER, leader_away, policy_target=policy)
    assert out.source is CommandSource.HANDOVER and out.intervening and out.event == "takeover"
    np.testing.assert_array_equal(out.target, FOLLOWER)  # holds; does not chase the leader
    # The operator brings the leader onto the follower: the arm holds until they agree.
    t = 0.2
    near = FOLLOWER + np.array([0.02] * 6 + [0.005])
    for leader in _towards(leader_away, near, 10):
        out = gate.update(t, FOLLOWER, leader, policy_target=policy)
        t += 0.1
        if out.source is CommandSource.LEADER:
            break
        np.testing.assert_array_equal(out.target, FOLLOWER)
    assert out.source is CommandSource.LEADER and out.event == "leader_drives"
    assert np.max(np.abs(out.target[:6] - FOLLOWER[:6])) <= 0.05  # the first leader target is next to the arm
    # The leader drives.
    moved = FOLLOWER + np.array([0.2, 0, 0, 0, 0, 0, 0])
    out = gate.update(t, near, moved, policy_target=policy)
    assert out.source is CommandSource.LEADER and out.intervening
    np.testing.assert_array_equal(out.target, moved)
    assert gate.segments == 1

    # Hand back: hold where the arm is until a policy target agrees with it.
    assert gate.request_handback()
    here = moved.copy()
    out = gate.update(t + 0.1, here, moved, policy_target=here + 0.3)
    assert out.source is CommandSource.HANDBACK and not out.intervening and out.event == "handback"
    np.testing.assert_array_equal(out.target, here)
    out = gate.update(t + 0.2, here, moved, policy_target=here + 0.3)  # a far chunk never drives
    np.testing.assert_array_equal(out.target, here)
    close = here + np.array([0.01] * 6 + [0.005])
    out = gate.update(t + 0.3, here, moved, policy_target=close)
    assert out.source is CommandSource.POLICY and out.event == "policy_drives"
    np.testing.assert_array_equal(out.target, close)


def test_auto_takeover_when_the_operator_moves_the_leader():
    gate = InterventionGate(InterventionConfig(auto_takeover_rad=0.15))
    rest = FOLLOWER + np.array([0.5, 0.3, 0, 0, 0, 0, 0])  # wherever the leader was left
    assert gate.update(0.0, FOLLOWER, rest, policy_target=FOLLOWER).source is CommandSource.POLICY
    assert gate.update(0.1, FOLLOWER, rest + 0.1, policy_target=FOLLOWER).source is CommandSource.POLICY
    out = gate.update(0.2, FOLLOWER, rest + 0.2, policy_target=FOLLOWER)
    assert out.source is CommandSource.HANDOVER and out.event == "auto_takeover" and out.intervening


def test_a_stale_or_bad_leader_never_drives():
    gate = InterventionGate(InterventionConfig(leader_timeout_s=0.2))
    gate.request_takeover()
    gate.update(0.0, FOLLOWER, FOLLOWER, leader_stamp=0.0)
    assert gate.source is CommandSource.LEADER
    out = gate.update(1.0, FOLLOWER, FOLLOWER + 0.01, leader_stamp=0.5)  # 0.5 s old
    assert out.source is CommandSource.LEADER and out.target is None  # the safety filter holds
    out = gate.update(1.1, FOLLOWER, np.full(7, np.nan), leader_stamp=1.1)
    assert out.target is None
    # A NaN leader never completes a handover either.
    fresh = InterventionGate()
    fresh.request_takeover()
    out = fresh.update(0.0, FOLLOWER, np.full(7, np.nan))
    assert out.source is CommandSource.HANDOVER
    np.testing.assert_array_equal(out.target, FOLLOWER)


@pytest.mark.parametrize("kwargs", [{"agree_tol_rad": 0.0}, {"agree_tol_m": float("nan")},
                                    {"auto_takeover_rad": 0.01}, {"leader_timeout_s": 0.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        InterventionConfig(**kwargs)
