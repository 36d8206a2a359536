"""Operator interventions (HG-DAgger, Kelly et al. 2019): who commands the arm, policy or leader.

``InterventionGate.update(now, follower, leader, policy_target)`` picks the target that goes on
to the safety filter (``SafetyFilter.step``, which still bounds every joint's speed) and says
whether this control period is an intervention (to be marked in the recording):

- ``policy``: the policy's target. ``request_takeover()`` (a service or a button) — or, with
  ``auto_takeover_rad``, the leader moving that far from where it rested when the policy took
  over (the operator grabbed it) — starts a handover;
- ``handover``: the arm holds where it was when the handover began while the operator brings the
  leader onto the follower; once every joint agrees within ``agree_tol_rad`` (and the gripper
  within ``agree_tol_m``) the leader drives. No jump: the arm never chases a leader that is away;
- ``leader``: the leader's command (an intervention). A leader stream that stops for more than
  ``leader_timeout_s`` makes the gate hold (the target is None: the filter keeps its last command);
- ``handback``: after ``request_handback()`` the arm holds until a policy target agrees with the
  follower within the same tolerances (a chunk planned from the current state does), then the
  policy drives again.

Pure logic, one thread, plain float seconds from one clock (as ``SafetyFilter``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from reconvla_core.piper import ACTION_DIM


class CommandSource(str, enum.Enum):
    POLICY = "policy"
    HANDOVER = "handover"
    LEADER = "leader"
    HANDBACK = "handback"


@dataclass(frozen=True)
class InterventionConfig:
    agree_tol_rad: float = 0.05  # every joint of leader (or policy target) and follower within this
    agree_tol_m: float = 0.01  # gripper opening within this
    auto_takeover_rad: float | None = None  # leader moved this far from its rest while the policy drives
    leader_timeout_s: float = 0.2  # leader commands older than this do not drive the arm

    def __post_init__(self) -> None:
        if not (np.isfinite(self.agree_tol_rad) and 0 < self.agree_tol_rad <= 0.3):
            raise ValueError(f"agree_tol_rad must be in (0, 0.3], got {self.agree_tol_rad}")
        if not (np.isfinite(self.agree_tol_m) and 0 < self.agree_tol_m <= 0.07):
            raise ValueError(f"agree_tol_m must be in (0, 0.07], got {self.agree_tol_m}")
        if self.auto_takeover_rad is not None and not (
            np.isfinite(self.auto_takeover_rad) and self.auto_takeover_rad > self.agree_tol_rad
        ):
            raise ValueError(f"auto_takeover_rad must be > agree_tol_rad ({self.agree_tol_rad}), "
                             f"got {self.auto_takeover_rad}")
        if not (np.isfinite(self.leader_timeout_s) and self.leader_timeout_s > 0):
            raise ValueError(f"leader_timeout_s must be > 0, got {self.leader_timeout_s}")


@dataclass(frozen=True)
class GateOutput:
    target: np.ndarray | None  # (7,) for the safety filter, or None: hold the last command
    source: CommandSource
    intervening: bool  # the operator commands this period (handover and leader count)
    event: str | None = None  # "takeover", "auto_takeover", "leader_drives", "handback", "policy_drives"


def _vector(value: object) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.shape != (ACTION_DIM,) or not np.all(np.isfinite(array)):
        return None
    return array


class InterventionGate:
    def __init__(self, config: InterventionConfig | None = None) -> None:
        self.config = config or InterventionConfig()
        self.source = CommandSource.POLICY
        self._hold: np.ndarray | None = None
        self._leader_rest: np.ndarray | None = None
        self._pending: str | None = None
        self.segments = 0  # interventions started

    # ------------------------------------------------------------------ requests
    def request_takeover(self) -> bool:
        """The operator asks for control; False when it already has it (or is getting it)."""
        if self.source in (CommandSource.HANDOVER, CommandSource.LEADER) or self._pending == "takeover":
            return False
        self._pending = "takeover"
        return True

    def request_handback(self) -> bool:
        """The operator gives control back; False when the policy has it already."""
        if self.source in (CommandSource.POLICY, CommandSource.HANDBACK) or self._pending == "handback":
            return False
        self._pending = "handback"
        return True

    def rearm(self) -> None:
        """The arm was disabled or emergency-stopped: an operator who had it must bring the leader
        onto the follower again before the leader drives (either may have moved meanwhile)."""
        if self.source is CommandSource.LEADER:
            self.source = CommandSource.HANDOVER
        self._hold = None  # re-taken from the follower at the next update

    @property
    def intervening(self) -> bool:
        return self.source in (CommandSource.HANDOVER, CommandSource.LEADER)

    # ------------------------------------------------------------------ control period
    def agrees(self, a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.max(np.abs(a[:6] - b[:6])) <= self.config.agree_tol_rad
                    and abs(a[6] - b[6]) <= self.config.agree_tol_m)

    def update(self, now: float, follower: object, leader: object = None, leader_stamp: float | None = None,
               policy_target: object = None) -> GateOutput:
        """One control period. ``leader_stamp``: when the leader command was read (None: now)."""
        follower_v = _vector(follower)
        leader_v = _vector(leader)
        if leader_v is not None and leader_stamp is not None and now - leader_stamp > self.config.leader_timeout_s:
            leader_v = None  # stale: never drive from it
        policy_v = _vector(policy_target)
        event: str | None = None

        if self.source is CommandSource.POLICY:
            if leader_v is not None and self._leader_rest is None:
                self._leader_rest = leader_v.copy()
            moved = (self.config.auto_takeover_rad is not None and leader_v is not None
                     and self._leader_rest is not None
                     and float(np.max(np.abs(leader_v[:6] - self._leader_rest[:6]))) > self.config.auto_takeover_rad)
            if self._pending == "takeover" or moved:
                event = "takeover" if self._pending == "takeover" else "auto_takeover"
                self._pending = None
                self.source = CommandSource.HANDOVER
                self.segments += 1
                self._hold = follower_v.copy() if follower_v is not None else None
            else:
                self._pending = None if self._pending == "handback" else self._pending
                return GateOutput(policy_v, self.source, False)

        if self.source is CommandSource.HANDOVER:
            if self._pending == "handback":  # changed their mind before taking it
                self._pending = None
                self.source = CommandSource.HANDBACK
                event = "handback"
            elif leader_v is not None and follower_v is not None and self.agrees(leader_v, follower_v):
                self.source = CommandSource.LEADER
                event = "leader_drives"
            else:
                return GateOutput(self._hold_target(follower_v), self.source, True, event)

        if self.source is CommandSource.LEADER:
            if self._pending == "handback":
                self._pending = None
                self.source = CommandSource.HANDBACK
                self._hold = follower_v.copy() if follower_v is not None else self._hold
                event = "handback"
            else:
                self._pending = None
                if leader_v is not None:
                    self._hold = leader_v.copy()
                return GateOutput(leader_v, self.source, True, event)  # None (stale leader): the filter holds

        # HANDBACK: hold until a policy target agrees with the follower.
        if self._pending == "takeover":
            self._pending = None
            self.source = CommandSource.HANDOVER
            self.segments += 1
            self._hold = follower_v.copy() if follower_v is not None else self._hold
            return GateOutput(self._hold_target(follower_v), self.source, True, "takeover")
        if policy_v is not None and follower_v is not None and self.agrees(policy_v, follower_v):
            self.source = CommandSource.POLICY
            self._leader_rest = leader_v.copy() if leader_v is not None else None
            return GateOutput(policy_v, self.source, False, "policy_drives")
        return GateOutput(self._hold_target(follower_v), self.source, False, event)

    def _hold_target(self, follower: np.ndarray | None) -> np.ndarray | None:
        if self._hold is None and follower is not None:
            self._hold = follower.copy()
        return None if self._hold is None else self._hold.copy()
