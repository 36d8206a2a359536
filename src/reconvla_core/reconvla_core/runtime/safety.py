"""The one safety filter every arm command passes (docs/architecture.md, "Safety").

``SafetyFilter.step(now, target)`` turns whatever the action queue produced (a 7-vector of
joint1..joint6 rad + gripper m, or ``None``) into the command the backend may send, or ``None``
when no motion command may be sent at all (disabled or emergency-stopped):

- only finite values of the right length pass; anything else -> hold;
- soft joint limits, ros2_control style: ``soft_limit_margin`` (0.05 rad) inside the PiPer's
  joint limits (the gripper's soft range is its 0..0.07 m range). A target at most
  ``limit_tolerance`` (0.02 rad; ``gripper_tolerance`` 5 mm) beyond a soft limit is clipped onto
  it; one further out is rejected (hold, counted): a learned policy asking for a pose past the
  limits is wrong, and clamping would execute a pose it never asked for. An arm that starts
  outside the soft range (the PiPer rests at joint2 = joint3 = 0, on the hard limits) may only
  move back towards it;
- each joint moves at most ``max_joint_speed * dt`` per control period (``dt = 1/control_rate``;
  default 1.0 rad/s for learned policies, configurable up to the PiPer's ``MAX_JOINT_SPEED``),
  the gripper at most ``max_gripper_speed * dt`` (default 0.1 m/s), an opening step starting from
  the fingers when they stopped on an object above the last command (``_unwind_gripper``);
- the speed percentage sent to the driver is capped;
- a stale observation (no fresh arm feedback within ``observation_timeout_s``) or no fresh chunk
  within ``chunk_timeout_s`` -> hold the last commanded position;
- ``estop()`` latches: no motion command until ``reset()`` and then ``enable()``;
- the filter starts disabled unless ``auto_enable`` (and then only once arm feedback arrived).

Times are plain floats in seconds from one clock (the node passes its ROS clock). The filter
holds no lock: call it from one thread (the arm_command control timer and its services run in
one mutually exclusive callback group).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reconvla_core.piper import (
    ACTION_DIM,
    GRIPPER_MAX,
    GRIPPER_MIN,
    JOINT_LOWER,
    JOINT_UPPER,
    MAX_JOINT_SPEED,
    SOFT_LIMIT_MARGIN,
)

logger = logging.getLogger(__name__)

NUM_JOINTS = len(JOINT_LOWER)
GRIPPER_INDEX = NUM_JOINTS  # the gripper opening follows the joints in a 7-vector


class ArmMode(str, enum.Enum):
    """Where the filter's state machine stands."""

    DISABLED = "disabled"
    ENABLED = "enabled"
    ESTOPPED = "estopped"


class HoldReason(str, enum.Enum):
    """Why a command held the last commanded position instead of tracking the target."""

    NONE = "none"
    NO_TARGET = "no_target"  # the action queue is empty (watchdog)
    INVALID_TARGET = "invalid_target"  # non-finite values or wrong length
    STALE_OBSERVATION = "stale_observation"  # no fresh arm feedback within observation_timeout_s
    NO_FRESH_CHUNK = "no_fresh_chunk"  # no chunk arrived within chunk_timeout_s
    OUT_OF_LIMITS = "out_of_limits"  # the target lies beyond a soft limit by more than the tolerance


# Conservative defaults for a learned policy; the operator may raise the joint speed up to
# MAX_JOINT_SPEED (the hardware's).
DEFAULT_MAX_JOINT_SPEED = 1.0  # rad/s
DEFAULT_MAX_GRIPPER_SPEED = 0.1  # m/s: the full 0.07 m stroke in 0.7 s
LIMIT_TOLERANCE = 0.02  # rad beyond a soft limit that is still clipped, not rejected
GRIPPER_TOLERANCE = 0.005  # m beyond the gripper range that is still clipped


@dataclass(frozen=True)
class SafetyConfig:
    """Limits of the safety filter. Defaults are the PiPer's (reconvla_core.piper)."""

    control_rate_hz: float = 30.0
    max_joint_speed: float = DEFAULT_MAX_JOINT_SPEED  # rad/s, at most MAX_JOINT_SPEED
    max_gripper_speed: float = DEFAULT_MAX_GRIPPER_SPEED  # m/s
    soft_limit_margin: float = SOFT_LIMIT_MARGIN  # rad, joints only
    limit_tolerance: float = LIMIT_TOLERANCE  # rad
    gripper_tolerance: float = GRIPPER_TOLERANCE  # m
    joint_lower: tuple[float, ...] = JOINT_LOWER
    joint_upper: tuple[float, ...] = JOINT_UPPER
    gripper_min: float = GRIPPER_MIN
    gripper_max: float = GRIPPER_MAX
    speed_percent: int = 50  # the speed percentage requested from the driver
    max_speed_percent: int = 100  # cap on any speed percentage sent
    observation_timeout_s: float = 0.5
    chunk_timeout_s: float = 1.0
    auto_enable: bool = False

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SafetyConfig.{name} must be a positive finite number, got {value!r}")

        for name in ("control_rate_hz", "max_joint_speed", "max_gripper_speed",
                     "observation_timeout_s", "chunk_timeout_s"):
            positive(name)
        if self.max_joint_speed > MAX_JOINT_SPEED:
            raise ValueError(
                f"SafetyConfig.max_joint_speed={self.max_joint_speed} exceeds the PiPer's "
                f"{MAX_JOINT_SPEED} rad/s; it may only be configured lower"
            )
        if len(self.joint_lower) != NUM_JOINTS or len(self.joint_upper) != NUM_JOINTS:
            raise ValueError(f"SafetyConfig.joint_lower/joint_upper need {NUM_JOINTS} values each")
        for i, (lo, hi) in enumerate(zip(self.joint_lower, self.joint_upper)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"SafetyConfig.joint_lower/joint_upper: bad range for joint{i + 1}: {lo}..{hi}")
            if lo < JOINT_LOWER[i] - 1e-9 or hi > JOINT_UPPER[i] + 1e-9:
                raise ValueError(
                    f"SafetyConfig.joint_lower/joint_upper: joint{i + 1} range {lo}..{hi} lies outside "
                    f"the PiPer's {JOINT_LOWER[i]}..{JOINT_UPPER[i]}; it may only be narrowed"
                )
        if not (GRIPPER_MIN <= self.gripper_min < self.gripper_max <= GRIPPER_MAX):
            raise ValueError(
                f"SafetyConfig.gripper_min/gripper_max must satisfy {GRIPPER_MIN} <= min < max <= {GRIPPER_MAX}, "
                f"got {self.gripper_min}..{self.gripper_max}"
            )
        for name in ("soft_limit_margin", "limit_tolerance", "gripper_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SafetyConfig.{name} must be a finite number >= 0, got {value!r}")
        narrowest = min(hi - lo for lo, hi in zip(self.joint_lower, self.joint_upper))
        if 2 * self.soft_limit_margin >= narrowest:
            raise ValueError(f"SafetyConfig.soft_limit_margin={self.soft_limit_margin} leaves no range "
                             f"for a joint {narrowest:.3f} rad wide")
        if not (1 <= int(self.max_speed_percent) <= 100):
            raise ValueError(f"SafetyConfig.max_speed_percent must be in 1..100, got {self.max_speed_percent}")
        if not (1 <= int(self.speed_percent) <= 100):
            raise ValueError(f"SafetyConfig.speed_percent must be in 1..100, got {self.speed_percent}")

    @property
    def dt(self) -> float:
        """One control period in seconds."""
        return 1.0 / self.control_rate_hz

    @property
    def lower(self) -> np.ndarray:
        """Lower bound of the 7-vector (joints + gripper)."""
        return np.array(self.joint_lower + (self.gripper_min,), dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        """Upper bound of the 7-vector (joints + gripper)."""
        return np.array(self.joint_upper + (self.gripper_max,), dtype=np.float64)

    @property
    def soft_lower(self) -> np.ndarray:
        """Lower soft limit of the 7-vector: joints inset by soft_limit_margin, the gripper's range."""
        return self.lower + np.array([self.soft_limit_margin] * NUM_JOINTS + [0.0])

    @property
    def soft_upper(self) -> np.ndarray:
        """Upper soft limit of the 7-vector."""
        return self.upper - np.array([self.soft_limit_margin] * NUM_JOINTS + [0.0])

    @property
    def tolerance(self) -> np.ndarray:
        """How far beyond a soft limit a target is still clipped rather than rejected."""
        return np.array([self.limit_tolerance] * NUM_JOINTS + [self.gripper_tolerance])

    @property
    def max_step(self) -> np.ndarray:
        """Largest change of each of the 7 values within one control period."""
        return np.array([self.max_joint_speed * self.dt] * NUM_JOINTS + [self.max_gripper_speed * self.dt])


@dataclass(frozen=True)
class SafetyCommand:
    """A command that passed the filter: 7 positions (rad, m) and the capped speed percentage."""

    positions: np.ndarray  # (7,) float64, finite, inside the limits
    speed_percent: int
    hold: HoldReason = HoldReason.NONE
    clipped: bool = False  # the target lay (within the tolerance) outside the soft limits
    rate_limited: bool = False  # the target was further than one step away


@dataclass
class SafetyCounters:
    """Totals for diagnostics."""

    commands: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    clipped: int = 0
    rate_limited: int = 0
    rejected_targets: int = 0  # malformed or beyond a soft limit by more than the tolerance
    out_of_limits: int = 0  # of those, beyond a soft limit
    refused_enables: int = 0
    estops: int = 0


def as_action(values: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
    """``values`` as a finite float64 7-vector, or None when it is missing, wrong-length or non-finite."""
    if values is None:
        return None
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if array.shape != (ACTION_DIM,) or not np.all(np.isfinite(array)):
        return None
    return array


class SafetyFilter:
    """State machine + per-tick command filter (see the module docstring)."""

    def __init__(self, config: SafetyConfig | None = None) -> None:
        self.config = config or SafetyConfig()
        self._lower = self.config.lower
        self._upper = self.config.upper
        self._soft_lower = self.config.soft_lower
        self._soft_upper = self.config.soft_upper
        self._tolerance = self.config.tolerance
        self._max_step = self.config.max_step
        self.mode = ArmMode.DISABLED
        self._last_command: np.ndarray | None = None
        self._measured: np.ndarray | None = None
        self._last_observation: float | None = None
        self._last_chunk: float | None = None
        self.counters = SafetyCounters()

    # --- inputs -------------------------------------------------------------------------------
    def observe(self, state: Sequence[float] | np.ndarray, now: float) -> bool:
        """Record fresh arm feedback (7 values). Returns False (and ignores it) when it is malformed."""
        array = as_action(state)
        if array is None:
            return False
        self._measured = array
        self._last_observation = now
        if self.config.auto_enable and self.mode is ArmMode.DISABLED and self._last_command is None:
            self.enable(now)  # auto_enable enables once, as soon as the arm's position is known
        return True

    def note_chunk(self, now: float) -> None:
        """Record that a fresh action chunk arrived."""
        self._last_chunk = now

    @property
    def measured(self) -> np.ndarray | None:
        return None if self._measured is None else self._measured.copy()

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._last_command is None else self._last_command.copy()

    # --- state machine ------------------------------------------------------------------------
    def enable(self, now: float | None = None) -> tuple[bool, str]:
        """Enable motion. Refused while estopped (reset first) or before any arm feedback arrived."""
        del now  # kept for symmetry with the other inputs
        if self.mode is ArmMode.ESTOPPED:
            self.counters.refused_enables += 1
            return False, "emergency stop is latched: call reset, then enable"
        if self._measured is None:
            self.counters.refused_enables += 1
            return False, "no arm feedback yet: cannot enable without knowing the arm's position"
        if self.mode is ArmMode.ENABLED:
            return True, "already enabled"
        # Start from where the arm is, so the first command is one bounded step away from it.
        self._last_command = np.clip(self._measured, self._lower, self._upper)
        self.mode = ArmMode.ENABLED
        logger.info("safety: enabled at %s", np.round(self._last_command, 4).tolist())
        return True, "enabled"

    def disable(self) -> tuple[bool, str]:
        """Stop sending motion commands (an estop stays latched)."""
        if self.mode is ArmMode.ESTOPPED:
            return True, "estopped (disabled)"
        self.mode = ArmMode.DISABLED
        return True, "disabled"

    def estop(self) -> None:
        """Latch the emergency stop: no motion command until reset() and enable()."""
        if self.mode is not ArmMode.ESTOPPED:
            logger.warning("safety: EMERGENCY STOP latched")
        self.mode = ArmMode.ESTOPPED
        self.counters.estops += 1

    def reset(self) -> tuple[bool, str]:
        """Clear a latched emergency stop; the arm stays disabled until enable()."""
        if self.mode is ArmMode.ESTOPPED:
            self.mode = ArmMode.DISABLED
            return True, "emergency stop cleared; call enable to move"
        return True, f"nothing to reset ({self.mode.value})"

    # --- the filter ---------------------------------------------------------------------------
    def _limit_excess(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        below = self._soft_lower - self._tolerance - array
        above = array - self._soft_upper - self._tolerance
        return below, above, np.maximum(below, above)

    def violating_steps(self, actions: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(K,) bool: which of these (K, 7) targets lie beyond a soft limit by more than the
        tolerance (the part of a rejected chunk RViz draws in red)."""
        return np.any(self._limit_excess(np.atleast_2d(np.asarray(actions, dtype=np.float64)))[2] > 0, axis=1)

    def limit_violation(self, actions: np.ndarray | Sequence[Sequence[float]]) -> str | None:
        """Why these (K, 7) targets must be rejected (one beyond a soft limit by more than the
        tolerance), or None when every one may be executed."""
        array = np.atleast_2d(np.asarray(actions, dtype=np.float64))
        below, above, excess = self._limit_excess(array)
        if not np.any(excess > 0):
            return None
        step, dim = np.unravel_index(int(np.argmax(excess)), excess.shape)
        name = f"joint{dim + 1}" if dim < NUM_JOINTS else "gripper"
        low = below[step, dim] > 0
        limit = (self._soft_lower if low else self._soft_upper)[dim]
        unit = "rad" if dim < NUM_JOINTS else "m"
        return (f"{name} target {array[step, dim]:.3f} {unit} (step {step}) lies "
                f"{excess[step, dim] + self._tolerance[dim]:.3f} {unit} beyond its soft "
                f"{'lower' if low else 'upper'} limit {limit:.3f} (tolerance {self._tolerance[dim]:.3f})")

    def hold_reason(self, now: float, require_chunk: bool = True) -> HoldReason:
        """Why the arm must hold at ``now`` regardless of the target (NONE if it may move)."""
        cfg = self.config
        if self._last_observation is None or now - self._last_observation > cfg.observation_timeout_s:
            return HoldReason.STALE_OBSERVATION
        if require_chunk and (self._last_chunk is None or now - self._last_chunk > cfg.chunk_timeout_s):
            return HoldReason.NO_FRESH_CHUNK
        return HoldReason.NONE

    def step(
        self, now: float, target: Sequence[float] | np.ndarray | None, *, require_chunk: bool = True
    ) -> SafetyCommand | None:
        """The command for this control period, or None when no motion command may be sent.

        ``require_chunk=False`` is for targets that do not come from the policy (homing): they
        still pass every limit and the observation watchdog, but not the chunk watchdog.
        """
        if self.mode is not ArmMode.ENABLED or self._last_command is None:
            return None
        reason = self.hold_reason(now, require_chunk)
        goal = None
        if reason is HoldReason.NONE:
            goal = as_action(target)
            if goal is None:
                reason = HoldReason.NO_TARGET if target is None else HoldReason.INVALID_TARGET
                if target is not None:
                    self.counters.rejected_targets += 1
        if goal is not None and self.limit_violation(goal) is not None:
            goal, reason = None, HoldReason.OUT_OF_LIMITS
            self.counters.rejected_targets += 1
            self.counters.out_of_limits += 1
        clipped = rate_limited = False
        if goal is None:
            positions = self._last_command.copy()
            self.counters.holds[reason.value] = self.counters.holds.get(reason.value, 0) + 1
        else:
            bounded = np.clip(goal, self._soft_lower, self._soft_upper)
            clipped = bool(np.any(bounded != goal))
            self._unwind_gripper(bounded[GRIPPER_INDEX])
            delta = bounded - self._last_command
            limited = np.clip(delta, -self._max_step, self._max_step)
            rate_limited = bool(np.any(limited != delta))
            # A step towards a target inside the soft limits stays inside them, or (an arm that
            # started outside them) moves back in; the final clip only guards against rounding.
            lower = np.minimum(self._soft_lower, self._last_command)
            upper = np.maximum(self._soft_upper, self._last_command)
            positions = np.clip(self._last_command + limited, lower, upper)
        self.counters.commands += 1
        self.counters.clipped += int(clipped)
        self.counters.rate_limited += int(rate_limited)
        self._last_command = positions
        speed = int(min(self.config.speed_percent, self.config.max_speed_percent))
        return SafetyCommand(positions.copy(), speed, reason, clipped, rate_limited)

    def _unwind_gripper(self, goal: float) -> None:
        """An opening command starts from where the fingers are. Closed on an object, the gripper
        stops at its width while the command (and so the rate limit's start) went on to the target
        below it; ramping back up from there would hold an opening command for that gap's width
        divided by ``max_gripper_speed`` (0.4 s for a 4 cm block) before the fingers move."""
        last = self._last_command
        if self._measured is None or last is None or goal <= self._measured[GRIPPER_INDEX]:
            return  # not opening past the fingers: a target below them keeps squeezing as before
        last[GRIPPER_INDEX] = max(last[GRIPPER_INDEX], self._measured[GRIPPER_INDEX])

    def home_target(self, home: Sequence[float] | np.ndarray) -> np.ndarray:
        """Validate a home pose: finite, 7 values, inside the limits (raises ValueError otherwise)."""
        array = as_action(home)
        if array is None:
            raise ValueError(f"home pose must be {ACTION_DIM} finite values (6 joints rad + gripper m)")
        if np.any(array < self._soft_lower) or np.any(array > self._soft_upper):
            raise ValueError(f"home pose {array.tolist()} lies outside the soft joint/gripper limits "
                             f"({self.config.soft_limit_margin} rad inside the joint limits)")
        return array
