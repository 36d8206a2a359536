"""The action-chunk execution queue that arm_command samples at its control rate.

A chunk is K actions (7-vectors: joints rad + gripper m) timed relative to the observation they
were predicted from: step i is meant for ``stamp + offsets[i]``. The queue keeps one absolute
timeline and answers ``sample(now)``: the action for this control tick, linearly interpolated
between the chunk steps around ``now`` (or the latest step at or before ``now`` with
``interpolate=False``). Steps whose time has passed are dropped.

Latency (``trim="executed"``, the default, as in LeRobot's async inference): a chunk predicted
from an observation at ``stamp`` arrives ``now - stamp`` later. Only the part of that delay the
arm spent *executing* queued actions moved it away from the observed state; while the queue was
dry the arm held still, so that idle time is skipped: the chunk is shifted later by it, and only
the prefix the arm really executed since the observation is trimmed. A predictor slower than the
chunk horizon therefore still moves the arm (the freshest chunk starts where the arm stands),
instead of every chunk arriving "entirely in the past". ``trim="wall"`` trims by wall-clock time
alone. Chunks are dropped (and counted, with the reason in ``last_report``) when their observation
is older than ``max_chunk_age_s`` on arrival, older than the chunk already queued or than the last
``clear(now)`` (superseded), or when the arm already executed past their end.

A new chunk either replaces the queued steps from its first step on (``mode="replace"``) or is
cross-faded into them (``mode="blend"``): over the overlap (or ``blend_s`` seconds) starting at
``max(now, first new step)`` the weight of the new chunk rises linearly from 0 to 1, so the
trajectory is continuous at the switch. When the timeline ends the queue is empty and
``sample`` returns None (the safety filter then holds): that is the watchdog.

Thread-safe: the node pushes from a subscription callback and samples from its timer.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reconvla_core.piper import ACTION_DIM, ACTION_NAMES

logger = logging.getLogger(__name__)

QUEUE_MODES = ("replace", "blend")
TRIM_MODES = ("executed", "wall")


@dataclass(frozen=True)
class ActionQueueConfig:
    """How chunks are merged and sampled."""

    mode: str = "blend"  # "replace" | "blend"
    blend_s: float = 0.0  # cross-fade duration in s; 0 = the whole overlap of old and new
    interpolate: bool = True  # linear between steps; False = zero-order hold of the latest step
    single_step_s: float = 0.1  # how long the last step of a 1-step chunk stays valid
    trim: str = "executed"  # "executed": skip the time the arm held still since the observation | "wall"
    max_chunk_age_s: float = 2.0  # a chunk whose observation is older than this on arrival is dropped

    def __post_init__(self) -> None:
        if self.mode not in QUEUE_MODES:
            raise ValueError(f"ActionQueueConfig.mode must be one of {QUEUE_MODES}, got {self.mode!r}")
        if self.trim not in TRIM_MODES:
            raise ValueError(f"ActionQueueConfig.trim must be one of {TRIM_MODES}, got {self.trim!r}")
        if not (self.max_chunk_age_s > 0):  # inf allowed: no bound
            raise ValueError(f"ActionQueueConfig.max_chunk_age_s must be > 0, got {self.max_chunk_age_s}")
        if not (math.isfinite(self.blend_s) and self.blend_s >= 0):
            raise ValueError(f"ActionQueueConfig.blend_s must be >= 0, got {self.blend_s}")
        if not (math.isfinite(self.single_step_s) and self.single_step_s > 0):
            raise ValueError(f"ActionQueueConfig.single_step_s must be > 0, got {self.single_step_s}")


class ChunkError(ValueError):
    """Trajectory points (a JointTrajectory message) that are not a valid action chunk."""


@dataclass(frozen=True)
class ActionChunk:
    """K actions predicted from the observation taken at ``stamp`` (seconds)."""

    stamp: float
    offsets: np.ndarray  # (K,) s after stamp, strictly increasing
    actions: np.ndarray  # (K, 7)

    @classmethod
    def from_rate(cls, stamp: float, actions: np.ndarray | Sequence[Sequence[float]], rate_hz: float) -> ActionChunk:
        """Step i at ``stamp + i / rate_hz`` (the first action is for the observation time)."""
        array = np.asarray(actions, dtype=np.float64)
        return cls(stamp, np.arange(len(array), dtype=np.float64) / float(rate_hz), array)

    @classmethod
    def from_trajectory(cls, joint_names: Sequence[str], points: Sequence[tuple[Sequence[float], float]],
                        stamp: float, now: float) -> ActionChunk:
        """A validated chunk from trajectory points, each (positions, seconds from the start).

        Positions are taken by joint name when ``joint_names`` is given (any order, extra joints
        ignored), else positionally in ``ACTION_NAMES`` order. ``stamp`` is the observation time;
        0 means "now" (a publisher that does not stamp). Raises ChunkError naming the problem.
        """
        if not points:
            raise ChunkError("action chunk has no points")
        names = list(joint_names)
        if names:
            missing = [n for n in ACTION_NAMES if n not in names]
            if missing:
                raise ChunkError(f"action chunk lacks joints {missing} (has {names})")
            order = [names.index(n) for n in ACTION_NAMES]
        else:
            order = list(range(ACTION_DIM))
        actions, offsets = [], []
        for k, (point_positions, offset) in enumerate(points):
            positions = list(point_positions)
            if len(positions) != (len(names) if names else ACTION_DIM):
                raise ChunkError(f"point {k} has {len(positions)} positions, expected {len(names) or ACTION_DIM}")
            actions.append([positions[i] for i in order])
            offsets.append(offset)
        try:
            return cls(stamp if stamp > 0 else now, np.array(offsets), np.array(actions)).validated()
        except ValueError as error:
            raise ChunkError(str(error)) from error

    def validated(self) -> ActionChunk:
        """This chunk as float64 arrays; ValueError naming the problem if it is malformed."""
        actions = np.asarray(self.actions, dtype=np.float64)
        offsets = np.asarray(self.offsets, dtype=np.float64).reshape(-1)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or actions.shape[0] == 0:
            raise ValueError(f"chunk actions must have shape (K>0, {ACTION_DIM}), got {actions.shape}")
        if offsets.shape != (actions.shape[0],):
            raise ValueError(f"chunk has {actions.shape[0]} actions but {offsets.shape[0]} time offsets")
        if not np.all(np.isfinite(actions)):
            raise ValueError("chunk contains non-finite actions (NaN or inf)")
        if not (np.all(np.isfinite(offsets)) and math.isfinite(self.stamp)):
            raise ValueError("chunk stamp or time offsets are not finite")
        if np.any(np.diff(offsets) <= 0):
            raise ValueError("chunk time offsets must be strictly increasing")
        return ActionChunk(float(self.stamp), offsets, actions)


DROP_REASONS = ("too_old", "superseded", "executed")


@dataclass(frozen=True)
class ChunkReport:
    """What ``push`` did with one chunk."""

    accepted: bool
    reason: str  # "accepted" or one of DROP_REASONS
    age_s: float  # now - stamp on arrival: observation-to-arrival latency
    horizon_s: float  # how long the chunk lasts (its steps plus the last step's period)
    skipped_idle_s: float  # time the arm held still since the observation, shifted over
    trimmed_steps: int  # steps the arm had executed the equivalent of (or whose time passed)
    remaining_steps: int  # steps at or after now

    def describe(self) -> str:
        """One line for a log message."""
        what = {"accepted": "accepted", "too_old": "dropped: observation too old",
                "superseded": "dropped: superseded by a newer observation or a clear",
                "executed": "dropped: the arm already executed past its end"}[self.reason]
        return (f"action chunk {what} (age {self.age_s:.3f} s, horizon {self.horizon_s:.3f} s, "
                f"held still {self.skipped_idle_s:.3f} s, {self.trimmed_steps} steps trimmed, "
                f"{self.remaining_steps} left)")


@dataclass
class QueueStats:
    """Totals for diagnostics."""

    chunks_accepted: int = 0
    chunks_rejected: int = 0  # malformed
    chunks_stale: int = 0  # the arm already executed past the chunk's end (reason "executed")
    chunks_too_old: int = 0  # observation older than max_chunk_age_s on arrival
    chunks_superseded: int = 0  # observation older than the queued chunk's or the last clear(now)
    late_steps: int = 0  # steps of accepted chunks trimmed on arrival

    @property
    def chunks_dropped(self) -> int:
        return self.chunks_stale + self.chunks_too_old + self.chunks_superseded


class ActionQueue:
    """Absolute-time action timeline fed with chunks and sampled once per control tick."""

    def __init__(self, config: ActionQueueConfig | None = None) -> None:
        self.config = config or ActionQueueConfig()
        self._times = np.zeros(0)
        self._actions = np.zeros((0, ACTION_DIM))
        self._end = -math.inf  # the timeline is valid until here
        # Closed intervals in which the queue was dry (the arm held still); the open one starts at
        # _end whenever the timeline is empty. Before the first chunk the arm held since -inf.
        self._idle: deque[tuple[float, float]] = deque(maxlen=256)
        self._newest_stamp = -math.inf  # observation stamp of the newest accepted chunk (or last clear)
        self._lock = threading.Lock()
        self.stats = QueueStats()
        self.last_report: ChunkReport | None = None

    # --- evaluation on a timeline -------------------------------------------------------------
    def _evaluate(self, times: np.ndarray, actions: np.ndarray, end: float, t: float) -> np.ndarray | None:
        if len(times) == 0 or t >= end:
            return None
        i = int(np.searchsorted(times, t, side="right")) - 1  # last step at or before t
        if i < 0:
            return actions[0].copy()  # the timeline starts in the future: head for its first step
        if not self.config.interpolate or i + 1 >= len(times):
            return actions[i].copy()
        w = (t - times[i]) / (times[i + 1] - times[i])
        return (1.0 - w) * actions[i] + w * actions[i + 1]

    # --- public API ---------------------------------------------------------------------------
    def push(self, chunk: ActionChunk, now: float) -> int:
        """Merge a chunk; returns how many of its steps lie at or after ``now`` (0: dropped).

        Raises ValueError for a malformed chunk (counted in stats.chunks_rejected).
        """
        return self.push_report(chunk, now).remaining_steps

    def _dry(self, now: float) -> bool:
        return len(self._times) == 0 or now >= self._end

    def _idle_within(self, start: float, now: float) -> float:
        """Seconds in [start, now] during which the queue was dry (the arm held still)."""
        total = sum(max(0.0, min(b, now) - max(a, start)) for a, b in self._idle)
        if self._dry(now):
            total += max(0.0, now - max(self._end, start))
        return total

    def push_report(self, chunk: ActionChunk, now: float) -> ChunkReport:
        """Merge a chunk and say what happened to it (see the module docstring).

        Raises ValueError for a malformed chunk (counted in stats.chunks_rejected).
        """
        try:
            chunk = chunk.validated()
        except ValueError:
            self.stats.chunks_rejected += 1
            raise
        offsets = chunk.offsets
        step = float(np.median(np.diff(offsets))) if len(offsets) > 1 else self.config.single_step_s
        horizon = float(offsets[-1] - offsets[0] + step)
        age = now - chunk.stamp
        with self._lock:
            if age > self.config.max_chunk_age_s:
                report = ChunkReport(False, "too_old", age, horizon, 0.0, len(offsets), 0)
            elif chunk.stamp < self._newest_stamp:
                report = ChunkReport(False, "superseded", age, horizon, 0.0, len(offsets), 0)
            else:
                report = self._merge(chunk, now, step, horizon, age)
        self._count(report)
        self.last_report = report
        return report

    def _merge(self, chunk: ActionChunk, now: float, step: float, horizon: float, age: float) -> ChunkReport:
        idle = self._idle_within(chunk.stamp, now) if self.config.trim == "executed" else 0.0
        times = chunk.stamp + idle + chunk.offsets
        end = float(times[-1] + step)
        late = int(np.sum(times < now))
        if end <= now:
            logger.debug("action queue: chunk executed already (ends %.3f s before now)", now - end)
            return ChunkReport(False, "executed", age, horizon, idle, late, 0)
        actions = chunk.actions.copy()
        if self._dry(now):
            self._idle.append((self._end, now))  # the dry spell ends here
        elif self.config.mode == "blend":
            start = max(now, float(times[0]))
            overlap_end = min(self._end, end)
            duration = self.config.blend_s or (overlap_end - start)
            for k, t in enumerate(times):
                old = self._evaluate(self._times, self._actions, self._end, float(t))
                if old is None:
                    continue
                w = 1.0 if duration <= 0 else float(np.clip((t - start) / duration, 0.0, 1.0))
                actions[k] = (1.0 - w) * old + w * actions[k]
        keep = self._times < times[0]  # queued steps before the new chunk begins stay
        self._times = np.concatenate([self._times[keep], times])
        self._actions = np.concatenate([self._actions[keep], actions])
        self._end = end
        self._newest_stamp = chunk.stamp
        self._prune(now)
        return ChunkReport(True, "accepted", age, horizon, idle, late, len(times) - late)

    def _count(self, report: ChunkReport) -> None:
        stats = self.stats
        if report.accepted:
            stats.chunks_accepted += 1
            stats.late_steps += report.trimmed_steps
        elif report.reason == "too_old":
            stats.chunks_too_old += 1
        elif report.reason == "superseded":
            stats.chunks_superseded += 1
        else:
            stats.chunks_stale += 1

    def _prune(self, now: float) -> None:
        """Drop steps that are over: everything before the last step at or before ``now``."""
        i = int(np.searchsorted(self._times, now, side="right")) - 1
        if i > 0:
            self._times = self._times[i:]
            self._actions = self._actions[i:]
        if now >= self._end:
            self._times = np.zeros(0)
            self._actions = np.zeros((0, ACTION_DIM))

    def sample(self, now: float) -> np.ndarray | None:
        """The action for the control tick at ``now``, or None when the queue has run dry."""
        with self._lock:
            value = self._evaluate(self._times, self._actions, self._end, now)
            self._prune(now)
        return value

    def clear(self, now: float | None = None) -> None:
        """Forget every queued step (estop, disable, home).

        With ``now``, chunks predicted from observations before ``now`` are dropped as superseded
        (the arm may have moved since: homing), and the arm counts as holding still from ``now``.
        """
        with self._lock:
            self._times = np.zeros(0)
            self._actions = np.zeros((0, ACTION_DIM))
            if now is None:
                self._end = -math.inf
            else:
                self._idle.clear()
                self._end = now
                self._newest_stamp = max(self._newest_stamp, now)

    def remaining_s(self, now: float) -> float:
        """Seconds of actions left at ``now`` (0 when empty)."""
        with self._lock:
            return max(0.0, self._end - now) if len(self._times) else 0.0

    def starved_s(self, now: float) -> float:
        """Seconds since the queue ran dry (0 while it holds actions; inf if it never held any)."""
        with self._lock:
            if len(self._times) and now < self._end:
                return 0.0
            return now - self._end

    def __len__(self) -> int:
        with self._lock:
            return len(self._times)
